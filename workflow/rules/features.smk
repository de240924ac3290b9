# Features stage: token-mean embeddings of the configured blocks and the final output, extracted once per
# encoder x task and shared by every analysis. Encoders from before fine-tuning (random, pretrained, continual)
# and the encoder inside each fine-tuned model (frozen runs reuse their starting encoder's features).


rule features:
    input:
        model=lambda wildcards: BASE_ENCODERS[wildcards.encoder],
        index=task_index,
    output:
        "results/features/{task}/{encoder}.npz",
    wildcard_constraints:
        task=name_pattern(TASKS),
        encoder=name_pattern(BASE_ENCODERS),
    params:
        features=features_params,
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
        "python -m taskalign.cli.features --task {wildcards.task} --model {input.model} --source encoder"
        " --index {input.index} --params {params.features:q} --out {output} --threads {threads} 2> {log}"


rule finetuned_features:
    input:
        model=f"results/finetune/{RUN_PATTERN}/model.safetensors",
        index=task_index,
    output:
        f"results/features/{RUN_PATTERN}.npz",
    wildcard_constraints:
        task=name_pattern(TASKS),
        init=name_pattern(INITS),
        protocol=name_pattern(PROTOCOLS),
        seed=r"\d+",
    params:
        features=features_params,
    threads: ANALYSIS["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=ANALYSIS["gpu"],
    log:
        f"results/logs/features/{RUN_PATTERN}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.features --task {wildcards.task} --model {input.model} --source finetuned"
        " --index {input.index} --params {params.features:q} --out {output} --threads {threads} 2> {log}"
