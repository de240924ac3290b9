# Fine-tuning matrix: one job per task x init x protocol x seed in config `finetune.runs`, each evaluated on its
# task's test split; `collect_metrics` gathers every run's metrics into one table.


rule finetune:
    input:
        encoder=finetune_encoder,
        index=task_index,
    output:
        model=f"results/finetune/{RUN_PATTERN}/model.safetensors",
        history=f"results/finetune/{RUN_PATTERN}/history.csv",
        curve=f"results/finetune/{RUN_PATTERN}/curve.png",
        timing=f"results/finetune/{RUN_PATTERN}/timing.json",
    wildcard_constraints:
        task=name_pattern(TASKS),
        init=name_pattern(INITS),
        protocol=name_pattern(PROTOCOLS),
        seed=r"\d+",
    params:
        finetune=finetune_params,
        init=lambda wildcards: INITS[wildcards.init],
        protocol=lambda wildcards: PROTOCOLS[wildcards.protocol],
        encoder=lambda wildcards, input: f"--encoder {input.encoder}" if input.encoder else "",
        resume_dir=f"results/resume/finetune/{RUN_PATTERN}",
    threads: FINETUNE["threads"]
    resources:
        mem_mb=16000,
        runtime=12 * 60,
        gpu=FINETUNE["gpu"],
    log:
        f"results/logs/finetune/{RUN_PATTERN}.log",
    benchmark:
        f"results/benchmarks/finetune/{RUN_PATTERN}.tsv"
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.finetune --task {wildcards.task} --init {params.init:q}"
        " --protocol {params.protocol:q} {params.encoder} --index {input.index}"
        " --params {params.finetune:q} --model {output.model} --history {output.history}"
        " --curve {output.curve} --timing {output.timing} --resume-dir {params.resume_dir}"
        " --threads {threads} 2> {log}"


rule evaluate:
    input:
        model=f"results/finetune/{RUN_PATTERN}/model.safetensors",
        index=task_index,
    output:
        metrics=f"results/evaluate/{RUN_PATTERN}/metrics.csv",
        cases=f"results/evaluate/{RUN_PATTERN}/cases.csv",
        predictions=f"results/evaluate/{RUN_PATTERN}/predictions.npz",
        montage=f"results/evaluate/{RUN_PATTERN}/montage.png",
    wildcard_constraints:
        task=name_pattern(TASKS),
        init=name_pattern(INITS),
        protocol=name_pattern(PROTOCOLS),
        seed=r"\d+",
    params:
        evaluate=evaluate_params,
    threads: EVALUATE["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=EVALUATE["gpu"],
    log:
        f"results/logs/evaluate/{RUN_PATTERN}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.evaluate --task {wildcards.task} --model {input.model} --index {input.index}"
        " --params {params.evaluate:q} --metrics {output.metrics} --cases {output.cases}"
        " --predictions {output.predictions} --montage {output.montage} --threads {threads} 2> {log}"


rule collect_metrics:
    input:
        run_paths("results/evaluate", ["metrics.csv"]),
    output:
        metrics="results/evaluate/metrics.csv",
        summary="results/evaluate/summary.csv",
    log:
        "results/logs/evaluate/collect.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.collect_metrics --out {output.metrics} --summary {output.summary} {input} 2> {log}"
