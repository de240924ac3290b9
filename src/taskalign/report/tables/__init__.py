"""Paper tables: the table model (model.py) and one builder module per table."""
