"""The models: the CVFP model, the gated context-vector LM, the LSTM and Transformer baselines, embeddings, sampling."""
