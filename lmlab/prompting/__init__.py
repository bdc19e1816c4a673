"""Prompting: prompt templates and in-context learning, chain of thought, and tool use (a generation
loop that runs the tools a model calls), with BM25 search over a local corpus."""
