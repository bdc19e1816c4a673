"""Attention encoder-decoder (Bahdanau et al. 2015) on synthetic translation tasks.

:mod:`lmlab.seq2seq.tasks` generates the data, :mod:`lmlab.models.seq2seq` is the
model, :mod:`lmlab.seq2seq.train` trains, decodes (greedy and beam), evaluates and
draws attention heatmaps, and :mod:`lmlab.seq2seq.commands` holds the CLI commands.
"""
