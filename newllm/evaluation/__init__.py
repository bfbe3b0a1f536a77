"""Measurements: context metrics, language-model metrics, scaling-law fits, int8 quantization."""
