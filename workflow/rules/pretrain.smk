# Pretraining stage: one encoder per variant (trained here or imported), plus the seeded random-init encoder.


rule pretrain:
    input:
        pretrain_inputs,
    output:
        encoder="results/pretrain/{variant}/encoder.safetensors",
        last="results/pretrain/{variant}/encoder_last.safetensors",
        history="results/pretrain/{variant}/history.csv",
        curve="results/pretrain/{variant}/loss_curve.png",
    wildcard_constraints:
        variant=name_pattern(TRAINED_VARIANTS),
    params:
        pretrain=pretrain_params,
        resume_dir="results/resume/pretrain/{variant}",
    priority: CRITICAL_PATH
    threads: PRETRAIN["threads"]
    resources:
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
        "python -m taskalign.cli.pretrain --variant {wildcards.variant} --index {input}"
        " --params {params.pretrain:q} --encoder {output.encoder} --last {output.last}"
        " --history {output.history} --curve {output.curve} --resume-dir {params.resume_dir}"
        " --threads {threads} 2> {log}"


rule random_encoder:
    output:
        "results/pretrain/random/encoder.safetensors",
    params:
        spec=random_encoder_params,
    priority: CRITICAL_PATH
    log:
        "results/logs/pretrain/random.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.encoder_file --random --params {params.spec:q} --out {output} 2> {log}"


rule import_encoder:
    output:
        "results/pretrain/{variant}/encoder.safetensors",
    wildcard_constraints:
        variant=name_pattern(IMPORTED_VARIANTS),
    params:
        spec=import_encoder_params,
    priority: CRITICAL_PATH
    log:
        "results/logs/pretrain/{variant}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.encoder_file --params {params.spec:q} --out {output} 2> {log}"
