"""taskalign: pretraining-task alignment of a prostate-MRI foundation model, as a Snakemake pipeline."""

from taskalign import imports

imports.install()

__version__ = "0.1.0"
