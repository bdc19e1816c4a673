"""Hallucination measured where the truth is known: a generated world of facts, models pretrained on
it, questions about entities seen often, rarely and never, detectors scored by AUROC, and
mitigations (retrieval-augmented prompts, training to answer "unknown")."""
