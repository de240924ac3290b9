"""Paper outputs: tables and figures, each carrying the provenance that produced it."""
