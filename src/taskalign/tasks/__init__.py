"""Downstream tasks: specifications, samples and degradations."""
