"""Evaluation of a trained model on the held-out test split."""
