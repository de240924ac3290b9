# Continual pretraining stage: LoRA on Q, K, V, O + ViT adapter + UperNet, trained on a segmentation target;
# the merged encoder is the stage's product.


rule continual:
    input:
        encoder="results/pretrain/{variant}/encoder.safetensors",
        index=f"results/cache/{CONTINUAL['cohort']}.csv",
    output:
        encoder="results/continual/{variant}/encoder.safetensors",
        adapter="results/continual/{variant}/adapter.safetensors",
        history="results/continual/{variant}/history.csv",
        curve="results/continual/{variant}/dice_curve.png",
    params:
        continual=continual_params,
        resume_dir="results/resume/continual/{variant}",
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
        "python -m taskalign.cli.continual --variant {wildcards.variant} --pretrained {input.encoder}"
        " --index {input.index} --params {params.continual:q} --encoder {output.encoder}"
        " --adapter {output.adapter} --history {output.history} --curve {output.curve}"
        " --resume-dir {params.resume_dir} --threads {threads} 2> {log}"
