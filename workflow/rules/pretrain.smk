# Pretraining stage: one encoder per variant (trained here or imported), plus the seeded random-init encoder.


# `exec`: python itself receives SLURM's SIGTERM and writes its resume state. The resume cadence and compile
# switch reach the job as resources, not params: changing them reruns nothing.
rule pretrain:
    input:
        [layout.cache_index(c) for c in PLAN.pretrain["cohorts"]],
    output:
        encoder=layout.pretrained_encoder("{variant}"),
        last=layout.pretrain_file("{variant}", "encoder_last.safetensors"),
        history=layout.pretrain_file("{variant}", "history.csv"),
        curve=layout.pretrain_file("{variant}", "loss_curve.png"),
    wildcard_constraints:
        variant=name_pattern(PLAN.trained_variants),
    params:
        pretrain=lambda wildcards: as_json(params.pretrain(PLAN, wildcards.variant)),
        resume_dir=layout.resume_dir("pretrain", "{variant}"),
    priority: CRITICAL_PATH
    threads: jobs.threads(PLAN, "pretrain")
    resources:
        **jobs.resources(PLAN, "pretrain"),
    log:
        layout.log_file("pretrain", "{variant}"),
    benchmark:
        layout.benchmark_file("pretrain", "{variant}")
    conda:
        CONDA_ENV
    shell:
        "exec python -m taskalign.cli.pretrain --variant {wildcards.variant:q} --index {input:q}"
        " --params {params.pretrain:q} --encoder {output.encoder:q} --last {output.last:q}"
        " --history {output.history:q} --curve {output.curve:q} --resume-dir {params.resume_dir:q}"
        " --checkpoint-minutes {resources.checkpoint_minutes:q} --compile {resources.compile:q}"
        " --threads {threads} 2> {log:q}"


rule random_encoder:
    output:
        layout.pretrained_encoder("random"),
    params:
        spec=as_json(params.random_encoder(PLAN)),
    priority: CRITICAL_PATH
    log:
        layout.log_file("pretrain", "random"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.encoder_file --random --params {params.spec:q} --out {output:q} 2> {log:q}"


rule import_encoder:
    output:
        layout.pretrained_encoder("{variant}"),
    wildcard_constraints:
        variant=name_pattern(PLAN.imported_variants),
    params:
        spec=lambda wildcards: as_json(params.imported_encoder(PLAN, wildcards.variant, Path(workflow.basedir))),
    priority: CRITICAL_PATH
    log:
        layout.log_file("pretrain", "{variant}"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.encoder_file --params {params.spec:q} --out {output:q} 2> {log:q}"
