# Features stage: token-mean embeddings of the configured blocks and the final output, extracted once per
# encoder x task and shared by every analysis. Encoders from before fine-tuning (random, pretrained, continual)
# and the encoder inside each fine-tuned model (frozen runs reuse their starting encoder's features).




rule features:
    input:
        model=lambda wildcards: PLAN.base_encoders[wildcards.encoder],
        index=task_index,
    output:
        layout.base_features("{task}", "{encoder}"),
    wildcard_constraints:
        task=name_pattern(TASKS),
        encoder=name_pattern(PLAN.base_encoders),
    params:
        features=lambda wildcards: as_json(params.features(PLAN, wildcards.task)),
    threads: ANALYSIS["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=ANALYSIS["gpu"],
    log:
        "results/logs/features/{task}/{encoder}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.features --task {wildcards.task:q} --model {input.model:q} --source encoder"
        " --index {input.index:q} --params {params.features:q} --out {output:q} --threads {threads} 2> {log:q}"


rule finetuned_features:
    input:
        model=layout.run_file("finetune", RUN, "model.safetensors"),
        index=task_index,
    output:
        layout.run_features(RUN),
    wildcard_constraints:
        **RUN_CONSTRAINTS,
    params:
        features=lambda wildcards: as_json(params.features(PLAN, wildcards.task)),
    threads: ANALYSIS["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=ANALYSIS["gpu"],
    log:
        f"results/logs/features/{layout.RUN_PATTERN}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.features --task {wildcards.task:q} --model {input.model:q} --source finetuned"
        " --index {input.index:q} --params {params.features:q} --out {output:q} --threads {threads} 2> {log:q}"
