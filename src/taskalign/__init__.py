"""taskalign: pretraining-task alignment of a prostate-MRI foundation model, as a Snakemake pipeline.

Importing the library changes nothing in the interpreter: the MONAI start-up trick is applied by the entry points
(`taskalign.cli`), not here, because Snakemake's own process and users' notebooks import taskalign too.
"""

__version__ = "0.1.0"
