"""Contextual word embeddings (Peters et al. 2018): layer-mixed ELMo representations of a text."""
