# Data stage: built-in phantom cohorts or imported ones -> checked manifests -> preprocessed cache + QC.


rule cohort:
    output:
        manifest="results/cohorts/{cohort}/manifest.csv",
        truth="results/cohorts/{cohort}/truth.csv",
        cases=directory("results/cohorts/{cohort}/cases"),
    wildcard_constraints:
        cohort=name_pattern(cohorts_from("phantom")),
    params:
        phantom=phantom_params,
    priority: CRITICAL_PATH
    threads: config["data"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        "results/logs/cohort/{cohort}.log",
    benchmark:
        "results/benchmarks/cohort/{cohort}.tsv"
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.cohort --cohort {wildcards.cohort} --manifest {output.manifest}"
        " --params {params.phantom:q} --workers {threads} 2> {log}"


rule import_cohort:
    output:
        manifest="results/cohorts/{cohort}/manifest.csv",
    wildcard_constraints:
        cohort=name_pattern(cohorts_from(*IMPORTERS)),
    params:
        spec=import_params,
    priority: CRITICAL_PATH
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        "results/logs/import_cohort/{cohort}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.import_cohort --cohort {wildcards.cohort} --out {output.manifest}"
        " --spec {params.spec:q} 2> {log}"


rule check_manifest:
    input:
        source_manifest,
    output:
        "results/manifests/{cohort}.csv",
    params:
        check=check_params,
    priority: CRITICAL_PATH
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        "results/logs/check_manifest/{cohort}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.check_manifest --manifest {input} --out {output}"
        " --params {params.check:q} 2> {log}"


rule preprocess:
    input:
        "results/manifests/{cohort}.csv",
    output:
        cache=directory("results/cache/{cohort}"),
        index="results/cache/{cohort}.csv",
        qc=directory("results/qc/{cohort}"),
    params:
        preprocess=lambda wildcards: as_json(config["preprocess"]),
    priority: CRITICAL_PATH
    threads: config["data"]["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
    log:
        "results/logs/preprocess/{cohort}.log",
    benchmark:
        "results/benchmarks/preprocess/{cohort}.tsv"
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.preprocess --manifest {input} --cache-dir {output.cache}"
        " --index {output.index} --qc-dir {output.qc} --params {params.preprocess:q}"
        " --workers {threads} 2> {log}"
