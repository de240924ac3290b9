# Report stage: every paper table (CSV, Markdown, LaTeX, and HTML for the report) and figure (PNG, PDF) by
# name, `{paper}_{what}`; `snakemake --report results/report.html` gathers them, grouped by paper. The plan names
# each output's input files; the builders get them by name (--inputs) and open nothing else. Each output's name,
# inputs and caption are declared once in taskalign.plan.outputs.OUTPUTS.


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
        paper=name_pattern(paper.PAPERS),
        what=name_pattern(paper.whats(figure=False)),
    params:
        inputs=lambda wildcards: as_json(paper.table_inputs(PLAN, f"{wildcards.paper}_{wildcards.what}")),
        settings=as_json(paper.report_settings(PLAN)),
        caption=lambda wildcards: paper.caption(f"{wildcards.paper}_{wildcards.what}"),
    log:
        layout.log_file("report", "{paper}_{what}"),
    conda:
        CONDA_ENV
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
        paper=name_pattern(paper.PAPERS),
        what=name_pattern(paper.whats(figure=True)),
    params:
        inputs=lambda wildcards: as_json(paper.figure_inputs(PLAN, f"{wildcards.paper}_{wildcards.what}")),
        settings=as_json(paper.report_settings(PLAN, figure=True)),
        caption=lambda wildcards: paper.caption(f"{wildcards.paper}_{wildcards.what}"),
    log:
        layout.log_file("report", "{paper}_{what}"),
    conda:
        CONDA_ENV
    shell:
        "python -m taskalign.cli.report --figure {wildcards.paper:q}_{wildcards.what:q} --inputs {params.inputs:q}"
        " --settings {params.settings:q} --out {output.png:q} 2> {log:q}"
