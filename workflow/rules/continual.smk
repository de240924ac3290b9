# Continual pretraining stage: LoRA on Q, K, V, O + ViT adapter + UperNet, trained on a segmentation target;
# the merged encoder is the stage's product.


# `exec`: python itself receives SLURM's SIGTERM and writes its resume state. The resume cadence and compile
# switch reach the job as resources, not params: changing them reruns nothing.
rule continual:
    input:
        encoder=layout.pretrained_encoder("{variant}"),
        index=layout.cache_index(PLAN.continual["cohort"]),
    output:
        encoder=layout.continual_encoder("{variant}"),
        adapter=layout.continual_file("{variant}", "adapter.safetensors"),
        history=layout.continual_file("{variant}", "history.csv"),
        curve=layout.continual_file("{variant}", "dice_curve.png"),
    params:
        continual=as_json(params.continual(PLAN)),
        resume_dir=layout.resume_dir("continual", "{variant}"),
    priority: CRITICAL_PATH
    threads: jobs.threads(PLAN, "continual")
    resources:
        **jobs.resources(PLAN, "continual"),
    log:
        layout.log_file("continual", "{variant}"),
    benchmark:
        layout.benchmark_file("continual", "{variant}")
    conda:
        CONDA_ENV
    shell:
        "exec python -m taskalign.cli.continual --variant {wildcards.variant:q} --pretrained {input.encoder:q}"
        " --index {input.index:q} --params {params.continual:q} --encoder {output.encoder:q}"
        " --adapter {output.adapter:q} --history {output.history:q} --curve {output.curve:q}"
        " --resume-dir {params.resume_dir:q} --checkpoint-minutes {resources.checkpoint_minutes:q}"
        " --compile {resources.compile:q} --threads {threads} 2> {log:q}"
