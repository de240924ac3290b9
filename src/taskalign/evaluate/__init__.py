"""Scoring and evaluation of fine-tuned models."""
