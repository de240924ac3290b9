# Fine-tuning matrix: one job per task x init x protocol x seed in config `finetune.runs`, each evaluated on its
# task's test split; `collect_metrics` gathers every run's metrics into one table.


# `exec`: python itself receives SLURM's SIGTERM and writes its resume state. The resume cadence and compile
# switch reach the job as resources, not params: changing them reruns nothing.
rule finetune:
    input:
        encoder=lambda wildcards: PLAN.init_encoder(PLAN.inits[wildcards.init]) or [],
        index=task_index,
    output:
        model=layout.run_file("finetune", RUN, "model.safetensors"),
        history=layout.run_file("finetune", RUN, "history.csv"),
        curve=layout.run_file("finetune", RUN, "curve.png"),
        timing=layout.run_file("finetune", RUN, "timing.json"),
    wildcard_constraints:
        **RUN_CONSTRAINTS,
    params:
        finetune=lambda wildcards: as_json(params.finetune(PLAN, wildcards.task, PLAN.inits[wildcards.init],
                                                                int(wildcards.seed))),
        init=lambda wildcards: PLAN.inits[wildcards.init],
        protocol=lambda wildcards: PLAN.protocols[wildcards.protocol],
        encoder=lambda wildcards, input: ["--encoder", input.encoder] if input.encoder else [],
        resume_dir=layout.resume_dir("finetune", layout.RUN_PATTERN),
    threads: jobs.threads(PLAN, "finetune")
    resources:
        **jobs.resources(PLAN, "finetune"),
    log:
        layout.log_file("finetune", layout.RUN_PATTERN),
    benchmark:
        layout.benchmark_file("finetune", layout.RUN_PATTERN)
    conda:
        CONDA_ENV
    shell:
        "exec python -m taskalign.cli.finetune --task {wildcards.task:q} --init {params.init:q}"
        " --protocol {params.protocol:q} {params.encoder:q} --index {input.index:q}"
        " --params {params.finetune:q} --model {output.model:q} --history {output.history:q}"
        " --curve {output.curve:q} --timing {output.timing:q} --resume-dir {params.resume_dir:q}"
        " --checkpoint-minutes {resources.checkpoint_minutes:q} --compile {resources.compile:q}"
        " --threads {threads} 2> {log:q}"


rule evaluate:
    input:
        model=layout.run_file("finetune", RUN, "model.safetensors"),
        index=task_index,
    output:
        metrics=layout.run_file("evaluate", RUN, "metrics.csv"),
        cases=layout.run_file("evaluate", RUN, "cases.csv"),
        predictions=layout.run_file("evaluate", RUN, "predictions.npz"),
        montage=layout.run_file("evaluate", RUN, "montage.png"),
    wildcard_constraints:
        **RUN_CONSTRAINTS,
    params:
        evaluate=lambda wildcards: as_json(params.evaluate(PLAN, wildcards.task, int(wildcards.seed))),
    threads: jobs.threads(PLAN, "evaluate")
    resources:
        **jobs.resources(PLAN, "evaluate"),
    log:
        layout.log_file("evaluate", layout.RUN_PATTERN),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.evaluate --task {wildcards.task:q} --model {input.model:q} --index {input.index:q}"
        " --params {params.evaluate:q} --metrics {output.metrics:q} --cases {output.cases:q}"
        " --predictions {output.predictions:q} --montage {output.montage:q} --threads {threads} 2> {log:q}"


rule collect_metrics:
    input:
        [layout.run_file("evaluate", run, "metrics.csv") for run in PLAN.runs],
    output:
        metrics=layout.collected_metrics(),
        summary=layout.metrics_summary(),
    log:
        layout.log_file("evaluate", "collect"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.collect_metrics --out {output.metrics:q} --summary {output.summary:q} {input:q}"
        " 2> {log:q}"
