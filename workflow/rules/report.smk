# Report stage: every paper table (CSV, Markdown, LaTeX, and HTML for the report) and figure (PNG, PDF) by
# name, `{paper}_{what}`; `snakemake --report results/report.html` gathers them, grouped by paper.


rule table:
    input:
        table_inputs,
    output:
        csv="results/tables/{paper}_{what}.csv",
        md="results/tables/{paper}_{what}.md",
        tex="results/tables/{paper}_{what}.tex",
        provenance="results/tables/{paper}_{what}.provenance.json",
        html=report(
            "results/tables/{paper}_{what}.html",
            caption="../report/table.rst",
            category="Paper {paper}",
            subcategory="Tables",
            labels={"table": "{paper}_{what}"},
        ),
    wildcard_constraints:
        paper=r"\d{3}",
        what=r"table\w+|lens_summary",
    params:
        settings=report_settings(),
    log:
        "results/logs/report/{paper}_{what}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.report --table {wildcards.paper}_{wildcards.what} --settings {params.settings:q}"
        " --out-dir results/tables 2> {log}"


rule figure:
    input:
        figure_inputs,
    output:
        png=report(
            "results/figures/{paper}_{what}.png",
            caption="../report/figure.rst",
            category="Paper {paper}",
            subcategory="Figures",
            labels={"figure": "{paper}_{what}"},
        ),
        pdf="results/figures/{paper}_{what}.pdf",
    wildcard_constraints:
        paper=r"\d{3}",
        what=r"fig\w+|lens_\w+",
    params:
        settings=report_settings(figure=True),
    log:
        "results/logs/report/{paper}_{what}.log",
    conda:
        "../../envs/taskalign.yaml"
    shell:
        "python -m taskalign.cli.report --figure {wildcards.paper}_{wildcards.what} --settings {params.settings:q}"
        " --out-dir results/figures 2> {log}"
