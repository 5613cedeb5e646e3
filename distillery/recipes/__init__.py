"""Experiments built from the steps (the TinyBERT ablation)."""
