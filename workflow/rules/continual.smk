# Continual pretraining stage: LoRA on Q, K, V, O + ViT adapter + UperNet, trained on a segmentation target;
# the merged encoder is the stage's product.
CONTINUAL = config["continual"]


def continual_params(wildcards):
    keys = ["target", "layers", "rank", "alpha", "dropout", "decoder_channels", "epochs", "batch_size", "lr",
            "warmup_epochs", "weight_decay"]
    return as_json({**{k: CONTINUAL[k] for k in keys}, "seed": config["seed"]})



# `exec`: python itself receives SLURM's SIGTERM and writes its resume state. The resume cadence and compile
# switch reach the job in its command from config, not params: changing them reruns nothing.
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
        continual=continual_params,
        resume_dir=layout.resume_dir("continual", "{variant}"),
    priority: CRITICAL_PATH
    threads: CONTINUAL["threads"]
    resources:
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
        "exec python -m taskalign.cli.continual --variant {wildcards.variant} --pretrained {input.encoder}"
        " --index {input.index} --params {params.continual:q} --encoder {output.encoder}"
        " --adapter {output.adapter} --history {output.history} --curve {output.curve}"
        " --resume-dir {params.resume_dir} --checkpoint-minutes {config[continual][checkpoint_minutes]}"
        " --compile {config[continual][compile]} --threads {threads} 2> {log}"
