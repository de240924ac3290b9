# Pretraining stage: one encoder per variant (trained here or imported), plus the seeded random-init encoder.
PRETRAIN = config["pretrain"]









# `exec`: python itself receives SLURM's SIGTERM and writes its resume state. The resume cadence and compile
# switch reach the job as resources, not params: changing them reruns nothing.
rule pretrain:
    input:
        [layout.cache_index(c) for c in PRETRAIN["cohorts"]],
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
    threads: PRETRAIN["threads"]
    resources:
        # how the job trains, not what it computes: resources are no rerun trigger (params would be)
        checkpoint_minutes=str(PRETRAIN["checkpoint_minutes"]),
        compile=PRETRAIN["compile"],
        mem_mb=16000,
        runtime=24 * 60,
        gpu=PRETRAIN["gpu"],
    log:
        "results/logs/pretrain/{variant}.log",
    benchmark:
        "results/benchmarks/pretrain/{variant}.tsv"
    conda:
        "../../envs/taskalign.yaml"
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
        "results/logs/pretrain/random.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.encoder_file --random --params {params.spec:q} --out {output:q} 2> {log:q}"


rule import_encoder:
    output:
        layout.pretrained_encoder("{variant}"),
    wildcard_constraints:
        variant=name_pattern(PLAN.imported_variants),
    params:
        spec=lambda wildcards: imported_encoder_spec(wildcards.variant),
    priority: CRITICAL_PATH
    log:
        "results/logs/pretrain/{variant}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.encoder_file --params {params.spec:q} --out {output:q} 2> {log:q}"
