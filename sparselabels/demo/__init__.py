"""Tiny end-to-end demos and experiments: a stdlib text corpus, a BPE tokenizer and tiny transformer models."""
