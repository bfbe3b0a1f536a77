"""Trainers and what they share: the training core, Phase 1, Phase 2 with its context cache and memory planner, the gated LM and baseline trainers."""
