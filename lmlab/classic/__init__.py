"""Classical language models, before neural networks took over.

- ``ngram``: corpus ids, vectorised n-gram counting, the backoff model, scoring and sampling
  (``train_ngram``, ``NgramModel``); ``ngram_smoothing``: mle, add-k, Good-Turing, Katz,
  Witten-Bell, Kneser-Ney and modified Kneser-Ney; ``arpa``: ARPA read/write (KenLM-compatible).
- ``word2vec``: skip-gram and CBOW word vectors.
"""
