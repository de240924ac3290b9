# Continual pretraining stage: LoRA on Q, K, V, O + ViT adapter + UperNet, trained on a segmentation target;
# the merged encoder is the stage's product.
CONTINUAL = config["continual"]





# `exec`: python itself receives SLURM's SIGTERM and writes its resume state. The resume cadence and compile
# switch reach the job as resources, not params: changing them reruns nothing.
rule continual:
    input:
        encoder=layout.pretrained_encoder("{variant}"),
        index=layout.cache_index(CONTINUAL["cohort"]),
    output:
        encoder=layout.continual_encoder("{variant}"),
        adapter=layout.continual_file("{variant}", "adapter.safetensors"),
        history=layout.continual_file("{variant}", "history.csv"),
        curve=layout.continual_file("{variant}", "dice_curve.png"),
    params:
        continual=as_json(params.continual(PLAN)),
        resume_dir=layout.resume_dir("continual", "{variant}"),
    priority: CRITICAL_PATH
    threads: CONTINUAL["threads"]
    resources:
        # how the job trains, not what it computes: resources are no rerun trigger (params would be)
        checkpoint_minutes=str(CONTINUAL["checkpoint_minutes"]),
        compile=CONTINUAL["compile"],
        mem_mb=16000,
        runtime=24 * 60,
        gpu=CONTINUAL["gpu"],
    log:
        "results/logs/continual/{variant}.log",
    benchmark:
        "results/benchmarks/continual/{variant}.tsv"
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "exec python -m taskalign.cli.continual --variant {wildcards.variant:q} --pretrained {input.encoder:q}"
        " --index {input.index:q} --params {params.continual:q} --encoder {output.encoder:q}"
        " --adapter {output.adapter:q} --history {output.history:q} --curve {output.curve:q}"
        " --resume-dir {params.resume_dir:q} --checkpoint-minutes {resources.checkpoint_minutes:q}"
        " --compile {resources.compile:q} --threads {threads} 2> {log:q}"
