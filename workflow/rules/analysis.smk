# Analysis stage: CKA between encoder pairs (000), MMD distances and relative performance gain (001), radiomics
# and the radiomic lens (003), a linear probe of the continual-pretraining target in the encoders' tokens.
# Per-task jobs, then one table per analysis under results/analysis/.








# Each analysis's per-task parts, collected into one table per analysis.
ANALYSIS_PARTS = {
    "cka": [layout.analysis_file(f"cka/{task}.csv") for task in PLAN.cka_tasks],
    "cka_deltas": [layout.analysis_file(f"cka/{task}_deltas.csv") for task in PLAN.cka_tasks],
    "lens": [layout.analysis_file(f"lens/{task}.csv") for task in PLAN.lens_tasks],
    "lens_summary": [layout.analysis_file(f"lens/{task}_summary.csv") for task in PLAN.lens_tasks],
}


rule cka:
    input:
        lambda wildcards: sorted({pair[end] for pair in PLAN.cka_pairs(wildcards.task) for end in "ab"}),
    output:
        pairs=layout.analysis_file("cka/{task}.csv"),
        deltas=layout.analysis_file("cka/{task}_deltas.csv"),
    wildcard_constraints:
        task=name_pattern(PLAN.cka_tasks),
    params:
        pairs=lambda wildcards: as_json(PLAN.cka_pairs(wildcards.task)),
        settings=as_json({**ANALYSIS["cka"], "seed": config["seed"]}),
    log:
        "results/logs/analysis/cka/{task}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.cka --task {wildcards.task:q} --pairs {params.pairs:q}"
        " --settings {params.settings:q} --out {output.pairs:q} --deltas-out {output.deltas:q} 2> {log:q}"


rule mmd:
    input:
        PLAN.mmd_input_files(),
    output:
        layout.analysis_file("mmd.csv"),
    params:
        inputs=as_json(PLAN.mmd_inputs()),
        settings=as_json({**ANALYSIS["mmd"], "seed": config["seed"]}),
    log:
        "results/logs/analysis/mmd.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.mmd --inputs {params.inputs:q} --settings {params.settings:q} --out {output:q}"
        " 2> {log:q}"


rule target_probe:
    input:
        encoders=list(PLAN.target_probe_encoders().values()),
        index=layout.cache_index(PLAN.continual["cohort"]),
    output:
        table=layout.analysis_file("target_probe.csv"),
        figure=report(
            layout.analysis_file("target_probe.png"),
            caption="../report/target_probe.rst",
            category="Encoders",
            subcategory="Continual pretraining",
            labels={"figure": "target_probe"},
        ),
    params:
        encoders=as_json(PLAN.target_probe_encoders()),
        settings=as_json({"target": PLAN.continual["target"], "layers": PLAN.continual["layers"],
                          "batch_size": ANALYSIS["batch_size"], "bootstrap": config["evaluate"]["bootstrap"],
                          "seed": config["seed"]}),
    threads: ANALYSIS["threads"]
    log:
        "results/logs/analysis/target_probe.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.target_probe --encoders {params.encoders:q} --index {input.index:q}"
        " --params {params.settings:q} --out {output.table:q} --figure {output.figure:q} --threads {threads} 2> {log:q}"


rule rpg:
    input:
        metrics=layout.collected_metrics(),
        distances=layout.analysis_file("mmd.csv"),
    output:
        rpg=layout.analysis_file("rpg.csv"),
        correlations=layout.analysis_file("rpg_correlations.csv"),
    params:
        models=[PLAN.model_label(m) for m in PLAN.models],
        tasks=as_json({t: PLAN.task_spec(t) for t in PLAN.tasks}),
        bootstrap=ANALYSIS["rpg"]["bootstrap"],
        seed=config["seed"],
    log:
        "results/logs/analysis/rpg.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.rpg --metrics {input.metrics:q} --distances {input.distances:q}"
        " --models {params.models:q} --tasks {params.tasks:q} --bootstrap {params.bootstrap:q} --seed {params.seed:q}"
        " --rpg {output.rpg:q} --correlations {output.correlations:q} 2> {log:q}"


rule radiomics:
    input:
        index=layout.cache_index("{cohort}"),
        params=radiomics_params_file(),
    output:
        layout.radiomics_table("{cohort}"),
    wildcard_constraints:
        cohort=name_pattern(PLAN.radiomics_cohorts),
    params:
        channels=ANALYSIS["radiomics"]["channels"],
    threads: ANALYSIS["radiomics"]["processes"]
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        "results/logs/radiomics/{cohort}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.radiomics --index {input.index:q} --params {input.params:q}"
        " --channels {params.channels:q} --processes {threads} --out {output:q} 2> {log:q}"


rule lens:
    input:
        unpack(lambda wildcards: PLAN.lens_inputs(wildcards.task)),
    output:
        table=layout.analysis_file("lens/{task}.csv"),
        summary=layout.analysis_file("lens/{task}_summary.csv"),
    wildcard_constraints:
        task=name_pattern(PLAN.lens_tasks),
    params:
        seeds=lambda wildcards: [run.seed for run in PLAN.lens_runs(wildcards.task)],
        settings=as_json(ANALYSIS["lens"]),
    log:
        "results/logs/analysis/lens/{task}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.lens --task {wildcards.task:q} --radiomics {input.radiomics:q}"
        " --pretrained {input.pretrained:q} --finetuned {input.finetuned:q} --seeds {params.seeds:q}"
        " --settings {params.settings:q}"
        " --table {output.table:q} --summary {output.summary:q} 2> {log:q}"


# One table per analysis, so that a change to one analysis does not touch the others' tables.
rule collect_analysis:
    input:
        lambda wildcards: ANALYSIS_PARTS[wildcards.analysis],
    output:
        layout.analysis_file("{analysis}.csv"),
    wildcard_constraints:
        analysis="cka|cka_deltas|lens|lens_summary",
    log:
        "results/logs/analysis/collect_{analysis}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.concat --out {output:q} {input:q} 2> {log:q}"
