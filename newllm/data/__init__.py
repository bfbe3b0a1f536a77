"""The data layer: sources (hub, local, built-in corpus), tokenizers, the token cache, corpora, and the one token-stream type."""
