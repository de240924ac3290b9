# taskalign: pretraining-task alignment of a prostate-MRI foundation model.
# Stages live in workflow/rules/<stage>.smk; path patterns and config look-ups in common.smk.
from snakemake.utils import min_version

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


rule all:
    default_target: True
    input:
        all_data_outputs(),
        all_encoder_outputs(),
        all_finetune_outputs(),


# Stage targets: `snakemake data` stops after the cache and QC montages; `snakemake encoders` after continual
# pretraining; `snakemake finetuned` after the fine-tuning matrix and its evaluation.
rule data:
    input:
        all_data_outputs(),


rule encoders:
    input:
        all_encoder_outputs(),


rule finetuned:
    input:
        all_finetune_outputs(),
