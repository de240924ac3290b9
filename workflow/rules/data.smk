# Data stage: built-in phantom cohorts or imported ones -> checked manifests -> preprocessed cache + QC.


rule cohort:
    output:
        manifest=layout.cohort_manifest("{cohort}"),
        truth=layout.phantom_truth("{cohort}"),
        cases=directory(layout.phantom_cases("{cohort}")),
    wildcard_constraints:
        cohort=name_pattern(PLAN.cohorts_from("phantom")),
    params:
        phantom=lambda wildcards: as_json(params.phantom(PLAN, wildcards.cohort)),
    priority: CRITICAL_PATH
    threads: jobs.threads(PLAN, "cohort")
    resources:
        **jobs.resources(PLAN, "cohort"),
    log:
        layout.log_file("cohort", "{cohort}"),
    benchmark:
        layout.benchmark_file("cohort", "{cohort}")
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.cohort --cohort {wildcards.cohort:q} --manifest {output.manifest:q}"
        " --params {params.phantom:q} --workers {threads} 2> {log:q}"


rule import_cohort:
    output:
        manifest=layout.cohort_manifest("{cohort}"),
    wildcard_constraints:
        cohort=name_pattern(PLAN.imported_cohorts),
    params:
        spec=lambda wildcards: as_json(params.importer(PLAN, wildcards.cohort)),
    priority: CRITICAL_PATH
    threads: jobs.threads(PLAN, "import_cohort")
    resources:
        **jobs.resources(PLAN, "import_cohort"),
    log:
        layout.log_file("import_cohort", "{cohort}"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.import_cohort --cohort {wildcards.cohort:q} --out {output.manifest:q}"
        " --spec {params.spec:q} 2> {log:q}"


rule check_manifest:
    input:
        lambda wildcards: PLAN.source_manifest(wildcards.cohort),
    output:
        layout.checked_manifest("{cohort}"),
    wildcard_constraints:
        cohort=name_pattern(PLAN.cohorts),
    params:
        check=lambda wildcards: as_json(params.check(PLAN, wildcards.cohort)),
    priority: CRITICAL_PATH
    resources:
        **jobs.resources(PLAN, "check_manifest"),
    log:
        layout.log_file("check_manifest", "{cohort}"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.check_manifest --manifest {input:q} --out {output:q}"
        " --params {params.check:q} 2> {log:q}"


# Patient leakage across cohorts by image content, before anything is computed on the cohorts.
rule shared_studies:
    input:
        [layout.checked_manifest(cohort) for cohort in PLAN.cohorts],
    output:
        layout.study_digests(),
    params:
        level=params.shared_studies(PLAN),
    priority: CRITICAL_PATH
    threads: jobs.threads(PLAN, "shared_studies")
    log:
        layout.log_file("data", "shared_studies"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.shared_studies --manifests {input:q} --level {params.level:q}"
        " --workers {threads} --out {output:q} 2> {log:q}"


rule preprocess:
    input:
        manifest=layout.checked_manifest("{cohort}"),
        studies=layout.study_digests(),
    output:
        cache=directory(layout.cache_dir("{cohort}")),
        index=layout.cache_index("{cohort}"),
        qc=directory(layout.qc_dir("{cohort}")),
    params:
        preprocess=lambda wildcards: as_json(params.preprocess(PLAN, wildcards.cohort)),
    priority: CRITICAL_PATH
    threads: jobs.threads(PLAN, "preprocess")
    resources:
        **jobs.resources(PLAN, "preprocess"),
    log:
        layout.log_file("preprocess", "{cohort}"),
    benchmark:
        layout.benchmark_file("preprocess", "{cohort}")
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.preprocess --manifest {input.manifest:q} --cache-dir {output.cache:q}"
        " --index {output.index:q} --qc-dir {output.qc:q} --params {params.preprocess:q}"
        " --workers {threads} 2> {log:q}"
