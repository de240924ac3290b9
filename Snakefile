# taskalign: pretraining-task alignment of a prostate-MRI foundation model.
# Stages live in workflow/rules/<stage>.smk; the experiment plan (every job and path) is taskalign.plan.
import sys
from pathlib import Path

from snakemake.utils import min_version

# The plan the rules ask comes from this checkout's src/, as the jobs' code does (common.smk's job_environment),
# whatever taskalign another checkout installed in the environment.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

min_version("9.11")


# A --configfile replaces the default config instead of being merged into it: a cohort or task left out
# of the user's config must not come back from the default one.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/continual.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.data_outputs(),
        PLAN.encoder_outputs(),
        PLAN.finetune_outputs(),
        PLAN.feature_outputs(),
        PLAN.analysis_outputs(),
        paper.paper_outputs(PLAN),


# Stage targets: `snakemake data` stops after the cache and QC montages; `snakemake encoders` after continual
# pretraining; `snakemake finetuned` after the fine-tuning matrix and its evaluation; `snakemake analyses` after
# features, CKA, MMD/RPG, radiomics and the radiomic lens.
rule data:
    input:
        PLAN.data_outputs(),


rule encoders:
    input:
        PLAN.encoder_outputs(),


rule finetuned:
    input:
        PLAN.finetune_outputs(),


rule analyses:
    input:
        PLAN.feature_outputs(),
        PLAN.analysis_outputs(),


# One paper's tables and figures: `snakemake tables_001` regenerates seed 001's outputs only.
for _paper in paper.PAPERS:

    rule:
        name:
            f"tables_{_paper}"
        input:
            paper.paper_outputs(PLAN, _paper),
