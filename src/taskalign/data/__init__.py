"""Data layer: built-in phantom cohort, importers, integrity check, splits, preprocessing (docs/data-contract.md)."""
