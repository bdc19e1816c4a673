"""Adaptation: fine-tuning a pretrained model on a labelled task (task heads, ULMFiT's three
stages, parameter-efficient methods) and the transfer-learning lineage on real labelled data."""
