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
        task=name_pattern(PLAN.tasks),
        encoder=name_pattern(PLAN.base_encoders),
    params:
        features=lambda wildcards: as_json(params.features(PLAN, wildcards.task)),
    threads: jobs.threads(PLAN, "features")
    resources:
        **jobs.resources(PLAN, "features"),
    log:
        layout.log_file("features/{task}", "{encoder}"),
    conda:
        CONDA_ENV
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
    threads: jobs.threads(PLAN, "finetuned_features")
    resources:
        **jobs.resources(PLAN, "finetuned_features"),
    log:
        layout.log_file("features", layout.RUN_PATTERN),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.features --task {wildcards.task:q} --model {input.model:q} --source finetuned"
        " --index {input.index:q} --params {params.features:q} --out {output:q} --threads {threads} 2> {log:q}"
