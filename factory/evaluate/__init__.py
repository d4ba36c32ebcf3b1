"""Evaluation: the built-in benchmark sets (sets) and scoring a trained model on them (score)."""
