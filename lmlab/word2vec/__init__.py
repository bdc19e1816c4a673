"""word2vec (Mikolov et al. 2013): skip-gram and CBOW word vectors.

``model``: vocabulary, subsampling and the SGD trainer; ``vectors``: word vectors and the
word2vec text format; ``evaluate``: analogy accuracy and similarity correlation;
``commands``: ``lmlab word2vec train|eval|neighbors``.
"""
