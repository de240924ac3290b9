# Analysis stage: CKA between encoder pairs (000), MMD distances and relative performance gain (001), radiomics
# and the radiomic lens (003), a linear probe of the continual-pretraining target in the encoders' tokens.
# Per-task jobs, then one table per analysis under results/analysis/.


# Each analysis's per-task parts, collected into one table per analysis.
ANALYSIS_PARTS = jobs.analysis_parts(PLAN)


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
        settings=as_json(params.cka(PLAN)),
    log:
        layout.log_file("analysis/cka", "{task}"),
    conda:
        CONDA_ENV
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
        settings=as_json(params.mmd(PLAN)),
    log:
        layout.log_file("analysis", "mmd"),
    conda:
        CONDA_ENV
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
        settings=as_json(params.target_probe(PLAN)),
    threads: jobs.threads(PLAN, "target_probe")
    log:
        layout.log_file("analysis", "target_probe"),
    conda:
        CONDA_ENV
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
        models=as_json(params.rpg(PLAN)["models"]),
        tasks=as_json(params.rpg(PLAN)["tasks"]),
        bootstrap=params.rpg(PLAN)["bootstrap"],
        seed=params.rpg(PLAN)["seed"],
    log:
        layout.log_file("analysis", "rpg"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.rpg --metrics {input.metrics:q} --distances {input.distances:q}"
        " --models {params.models:q} --tasks {params.tasks:q} --bootstrap {params.bootstrap:q} --seed {params.seed:q}"
        " --rpg {output.rpg:q} --correlations {output.correlations:q} 2> {log:q}"


rule radiomics:
    input:
        index=layout.cache_index("{cohort}"),
        params=params.radiomics_file(PLAN, Path(workflow.basedir)),
    output:
        layout.radiomics_table("{cohort}"),
    wildcard_constraints:
        cohort=name_pattern(PLAN.radiomics_cohorts),
    params:
        channels=params.radiomics_channels(PLAN),
    threads: jobs.threads(PLAN, "radiomics")
    resources:
        **jobs.resources(PLAN, "radiomics"),
    log:
        layout.log_file("radiomics", "{cohort}"),
    conda:
        CONDA_ENV
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
        settings=as_json(params.lens(PLAN)),
    log:
        layout.log_file("analysis/lens", "{task}"),
    conda:
        CONDA_ENV
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
        analysis=name_pattern(ANALYSIS_PARTS),
    log:
        layout.log_file("analysis", "collect_{analysis}"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.concat --out {output:q} {input:q} 2> {log:q}"
