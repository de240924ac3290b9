"""Performance benchmarks of taskalign (run `python benchmarks/run.py`; see benchmarks/README.md).

Every figure is a ratio of two measurements taken side by side in the same run, so that a busy, shared machine
shifts both sides alike. Nothing here is imported by the library or the pipeline."""
