# Report stage: every paper table (CSV, Markdown, LaTeX, and HTML for the report) and figure (PNG, PDF) by
# name, `{paper}_{what}`; `snakemake --report results/report.html` gathers them, grouped by paper. The plan names
# each output's input files; the builders get them by name (--inputs) and open nothing else.






rule table:
    input:
        lambda wildcards: paper.input_paths(paper.table_inputs(PLAN, f"{wildcards.paper}_{wildcards.what}")),
    output:
        csv=layout.table_files("{paper}_{what}")[0],
        md=layout.table_files("{paper}_{what}")[1],
        tex=layout.table_files("{paper}_{what}")[2],
        provenance=layout.table_files("{paper}_{what}")[3],
        html=report(
            layout.table_files("{paper}_{what}")[4],
            caption="../report/table.rst",
            category="Paper {paper}",
            subcategory="Tables",
            labels={"table": "{paper}_{what}"},
        ),
    wildcard_constraints:
        paper=r"\d{3}",
        what=r"table\w+|lens_summary",
    params:
        inputs=lambda wildcards: as_json(paper.table_inputs(PLAN, f"{wildcards.paper}_{wildcards.what}")),
        settings=as_json(paper.report_settings(PLAN)),
    log:
        "results/logs/report/{paper}_{what}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.report --table {wildcards.paper:q}_{wildcards.what:q} --inputs {params.inputs:q}"
        " --settings {params.settings:q} --out {output.csv:q} 2> {log:q}"


rule figure:
    input:
        lambda wildcards: paper.input_paths(paper.figure_inputs(PLAN, f"{wildcards.paper}_{wildcards.what}")),
    output:
        png=report(
            layout.figure_files("{paper}_{what}")[0],
            caption="../report/figure.rst",
            category="Paper {paper}",
            subcategory="Figures",
            labels={"figure": "{paper}_{what}"},
        ),
        pdf=layout.figure_files("{paper}_{what}")[1],
    wildcard_constraints:
        paper=r"\d{3}",
        what=r"fig\w+|lens_\w+",
    params:
        inputs=lambda wildcards: as_json(paper.figure_inputs(PLAN, f"{wildcards.paper}_{wildcards.what}")),
        settings=as_json(paper.report_settings(PLAN, figure=True)),
    log:
        "results/logs/report/{paper}_{what}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.report --figure {wildcards.paper:q}_{wildcards.what:q} --inputs {params.inputs:q}"
        " --settings {params.settings:q} --out {output.png:q} 2> {log:q}"
