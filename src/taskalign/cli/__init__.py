"""Small entry points that the Snakemake rules call as `python -m taskalign.cli.<stage>`."""
