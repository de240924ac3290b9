"""Downstream tasks as data (specifications), their samples, degradations and losses, and the loaders that feed
every stage."""
