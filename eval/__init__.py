"""Evaluation metrics: Fréchet distance, KID, Inception Score, colour metrics, extractors."""
