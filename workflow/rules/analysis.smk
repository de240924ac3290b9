# Analysis stage: CKA between encoder pairs (000), MMD distances and relative performance gain (001), radiomics
# and the radiomic lens (003), a linear probe of the continual-pretraining target in the encoders' tokens.
# Per-task jobs, then one table per analysis under results/analysis/.


rule cka:
    input:
        lambda wildcards: sorted({pair[end] for pair in cka_pairs(wildcards.task) for end in "ab"}),
    output:
        "results/analysis/cka/{task}.csv",
    wildcard_constraints:
        task=name_pattern(CKA_TASKS),
    params:
        pairs=lambda wildcards: as_json(cka_pairs(wildcards.task)),
        settings=as_json({**ANALYSIS["cka"], "seed": config["seed"]}),
    log:
        "results/logs/analysis/cka/{task}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.cka --task {wildcards.task} --pairs {params.pairs:q}"
        " --settings {params.settings:q} --out {output} 2> {log}"


rule mmd:
    input:
        unpack(mmd_inputs),
    output:
        "results/analysis/mmd/{task}.csv",
    wildcard_constraints:
        task=name_pattern(MMD_TASKS),
    params:
        seeds=lambda wildcards: " ".join(map(str, mmd_seeds(wildcards.task))),
        settings=as_json({**ANALYSIS["mmd"], "seed": config["seed"]}),
    log:
        "results/logs/analysis/mmd/{task}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.mmd --task {wildcards.task} --random {input.random}"
        " --pretrained {input.pretrained} --finetuned {input.finetuned} --scratch {input.scratch}"
        " --seeds {params.seeds} --settings {params.settings:q} --out {output} 2> {log}"


rule target_probe:
    input:
        encoders=list(target_probe_encoders().values()),
        index=f"results/cache/{CONTINUAL['cohort']}.csv",
    output:
        table="results/analysis/target_probe.csv",
        figure=report(
            "results/analysis/target_probe.png",
            caption="../report/target_probe.rst",
            category="Encoders",
            subcategory="Continual pretraining",
            labels={"figure": "target_probe"},
        ),
    params:
        encoders=as_json(target_probe_encoders()),
        settings=as_json({"target": CONTINUAL["target"], "layers": CONTINUAL["layers"],
                          "batch_size": ANALYSIS["batch_size"], "bootstrap": config["evaluate"]["bootstrap"],
                          "seed": config["seed"]}),
    threads: ANALYSIS["threads"]
    log:
        "results/logs/analysis/target_probe.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.target_probe --encoders {params.encoders:q} --index {input.index}"
        " --params {params.settings:q} --out {output.table} --figure {output.figure} --threads {threads} 2> {log}"


rule rpg:
    input:
        summary="results/evaluate/summary.csv",
        distances="results/analysis/mmd.csv",
    output:
        rpg="results/analysis/rpg.csv",
        correlations="results/analysis/rpg_correlations.csv",
    params:
        variant=ANALYSED,
    log:
        "results/logs/analysis/rpg.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.rpg --summary {input.summary} --distances {input.distances}"
        " --variant {params.variant} --rpg {output.rpg} --correlations {output.correlations} 2> {log}"


rule radiomics:
    input:
        index="results/cache/{cohort}.csv",
        params=radiomics_params_file(),
    output:
        "results/radiomics/{cohort}.csv",
    wildcard_constraints:
        cohort=name_pattern(RADIOMICS_COHORTS),
    params:
        channels=" ".join(ANALYSIS["radiomics"]["channels"]),
    threads: ANALYSIS["radiomics"]["processes"]
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        "results/logs/radiomics/{cohort}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.radiomics --index {input.index} --params {input.params}"
        " --channels {params.channels} --processes {threads} --out {output} 2> {log}"


rule lens:
    input:
        radiomics=lambda wildcards: f"results/radiomics/{TASKS[wildcards.task]['cohort']}.csv",
        pretrained=lambda wildcards: base_features(wildcards.task, f"pretrained-{ANALYSED}"),
        finetuned=lambda wildcards: run_features(*lens_run(wildcards.task)),
    output:
        table="results/analysis/lens/{task}.csv",
        summary="results/analysis/lens/{task}_summary.csv",
    wildcard_constraints:
        task=name_pattern(LENS_TASKS),
    params:
        settings=as_json(ANALYSIS["lens"]),
    log:
        "results/logs/analysis/lens/{task}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.lens --task {wildcards.task} --radiomics {input.radiomics}"
        " --pretrained {input.pretrained} --finetuned {input.finetuned} --settings {params.settings:q}"
        " --table {output.table} --summary {output.summary} 2> {log}"


# One table per analysis, so that a change to one analysis does not touch the others' tables.
rule collect_analysis:
    input:
        lambda wildcards: {
            "cka": expand("results/analysis/cka/{task}.csv", task=CKA_TASKS),
            "mmd": expand("results/analysis/mmd/{task}.csv", task=MMD_TASKS),
            "lens": expand("results/analysis/lens/{task}.csv", task=LENS_TASKS),
            "lens_summary": expand("results/analysis/lens/{task}_summary.csv", task=LENS_TASKS),
        }[wildcards.analysis],
    output:
        "results/analysis/{analysis}.csv",
    wildcard_constraints:
        analysis="cka|mmd|lens|lens_summary",
    log:
        "results/logs/analysis/collect_{analysis}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.concat --out {output} {input} 2> {log}"
