"""N-gram language models (Chen & Goodman 1998), the first branch of the lineage.

``counts``: word streams and vectorised n-gram counting; ``smoothing``: mle, add-k,
Good-Turing, Katz, Witten-Bell, Kneser-Ney and modified Kneser-Ney; ``model``: the
backoff model, scoring, sampling and ``train_ngram``; ``arpa``: ARPA read/write
(KenLM-compatible); ``token_lm``: an n-gram over token ids as a sequence model over a
tokenizer's vocabulary (what ``lmlab lineage`` saves and ``lmlab serve`` serves);
``commands``: ``lmlab ngram train|eval|generate``.
"""
