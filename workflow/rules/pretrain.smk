# Pretraining stage: one encoder per variant (trained here or imported), plus the seeded random-init encoder.
PRETRAIN = config["pretrain"]


def encoder_geometry():
    """EncoderGeometry fields from the config (taskalign.models.encoder)."""
    encoder = config["encoder"]
    return {"in_channels": len(config["preprocess"]["channels"]), "img_size": config["preprocess"]["size"],
            **{k: encoder[k] for k in ("patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")}}


def pretrain_params(wildcards):
    keys = ["mask_ratio", "weights", "decoder_layers", "epochs", "batch_size", "lr", "warmup_epochs",
            "weight_decay", "holdout_fraction"]
    return as_json({**{k: PRETRAIN[k] for k in keys}, "objectives": PLAN.variants[wildcards.variant]["objectives"],
                    "geometry": encoder_geometry(), "channels": config["preprocess"]["channels"],
                    "seed": config["seed"]})


def import_encoder_params(wildcards):
    spec = PLAN.variants[wildcards.variant]
    return as_json({"geometry": encoder_geometry(), "path": spec["path"], "layout": spec.get("layout", "timm")})



# `exec`: python itself receives SLURM's SIGTERM and writes its resume state. The resume cadence and compile
# switch reach the job in its command from config, not params: changing them reruns nothing.
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
        pretrain=pretrain_params,
        resume_dir=layout.resume_dir("pretrain", "{variant}"),
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
        "exec python -m taskalign.cli.pretrain --variant {wildcards.variant} --index {input}"
        " --params {params.pretrain:q} --encoder {output.encoder} --last {output.last}"
        " --history {output.history} --curve {output.curve} --resume-dir {params.resume_dir}"
        " --checkpoint-minutes {config[pretrain][checkpoint_minutes]} --compile {config[pretrain][compile]}"
        " --threads {threads} 2> {log}"


rule random_encoder:
    output:
        layout.pretrained_encoder("random"),
    params:
        spec=as_json({"geometry": encoder_geometry(), "seed": config["seed"]}),
    priority: CRITICAL_PATH
    log:
        "results/logs/pretrain/random.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.encoder_file --random --params {params.spec:q} --out {output} 2> {log}"


rule import_encoder:
    output:
        layout.pretrained_encoder("{variant}"),
    wildcard_constraints:
        variant=name_pattern(PLAN.imported_variants),
    params:
        spec=import_encoder_params,
    priority: CRITICAL_PATH
    log:
        "results/logs/pretrain/{variant}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.encoder_file --params {params.spec:q} --out {output} 2> {log}"
