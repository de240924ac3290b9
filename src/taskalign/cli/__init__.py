"""Small entry points that the Snakemake rules call as `python -m taskalign.cli.<stage>`.

Importing this package (as `-m taskalign.cli.<stage>` does first) makes MONAI import without its optional extras
(taskalign.cli.imports): a job's start-up is seconds shorter, and nothing it computes changes.
"""

from taskalign.cli import imports

imports.install()
