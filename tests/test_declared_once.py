"""Issue 30 "Declared once": the rules read no config and write no path of their own, paper outputs are declared
once, and no function outside cli/ takes more than 8 parameters (source scans; fast)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO, TEST_CONFIG, plan_of

SRC = REPO / "src/taskalign"
RULE_FILES = sorted((REPO / "workflow/rules").glob("*.smk")) + [REPO / "Snakefile"]
# Still over 8 parameters (issue 30, left for a follow-up): the list may only shrink.
KNOWN_LONG: set[str] = set()


def code_lines(path: Path):
    """(line number, text without its comment) of a rule file."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        yield number, line.split("#")[0]


def test_no_rule_reads_the_config():
    reads = [f"{path.name}:{n}: {code.strip()}" for path in RULE_FILES for n, code in code_lines(path)
             if re.search(r"(?<![\w/.\"])config\b(?![./\w])", code)]
    # the one read: common.smk makes the plan from the validated config
    assert reads == [next(r for r in reads if "checked_plan(config," in r)], reads


def test_no_results_path_outside_the_layout():
    """A `results/` path literal in a rule, or in code (docstrings and --help texts are prose), is written only in
    taskalign.plan.layout."""
    found = [f"{path.name}:{n}" for path in RULE_FILES for n, code in code_lines(path)
             if re.search(r"[\"'][^\"']*\bresults/", code)]
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "plan/layout.py":
            continue
        tree = ast.parse(path.read_text())
        prose = {id(node.body[0].value) for node in ast.walk(tree)
                 if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.body and isinstance(node.body[0], ast.Expr)}
        prose |= {id(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  for k in node.keywords if k.arg == "help"}
        found += [f"{path.relative_to(SRC)}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
                  and re.search(r"\bresults/", node.value)]
    assert found == []
    # and the layout's patterns are the rules' logs and benchmarks
    text = (REPO / "workflow/rules/finetune.smk").read_text()
    assert 'layout.log_file("finetune", layout.RUN_PATTERN)' in text


def parameter_count(node: ast.FunctionDef) -> int:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args] + [a.arg for a in args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a]
    return len([n for n in names if n not in ("self", "cls")])


def test_no_new_function_takes_more_than_8_parameters():
    long = set()
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameter_count(node) > 8:
                long.add(f"{path.relative_to(SRC)}:{node.name}")
    assert long - KNOWN_LONG == set(), "new functions with more than 8 parameters"
    assert KNOWN_LONG - long == set(), "fixed: take them off KNOWN_LONG"


def test_every_paper_output_is_declared_once_and_has_a_builder():
    import taskalign.plan.outputs as outputs
    from taskalign.report import paper

    assert len(outputs.BY_NAME) == len(outputs.OUTPUTS)
    assert set(paper.TABLE_BUILDERS) == set(outputs.TABLES) and set(paper.DRAW) == set(outputs.FIGURES)
    assert all(o.caption and o.paper in outputs.PAPERS for o in outputs.OUTPUTS)
    # the captions and the report rules' wildcard constraints come from the declarations
    for name in ("table.rst", "figure.rst"):
        assert (REPO / "workflow/report" / name).read_text().strip() == "{{ snakemake.params.caption }}"
    rules = (REPO / "workflow/rules/report.smk").read_text()
    assert "paper.whats(figure=False)" in rules and "paper.whats(figure=True)" in rules
    plan = plan_of(TEST_CONFIG)
    for name in outputs.paper_tables(plan):
        assert outputs.table_inputs(plan, name)
    # the report gets the compared models as [label, init, protocol] and the analysed inits, and parses neither
    settings = outputs.report_settings(plan)
    assert all(label == f"{init}/{protocol}" for label, init, protocol in settings["models"])
    assert settings["inits"] == {"pretrained": f"pretrained:{plan.analysed}",
                                 "continual": f"continual:{plan.analysed}"}
    source = (SRC / "report/paper.py").read_text() + (SRC / "report/tables/cka.py").read_text()
    assert 'f"pretrained:' not in source
    # no module parses a model label back into init and protocol: the plan hands out [label, init, protocol]
    assert not [p for p in SRC.rglob("*.py") if "split_model" in p.read_text()]


def test_rule_files_have_no_runs_of_blank_lines_and_one_conda_environment():
    for path in RULE_FILES:
        text = path.read_text()
        assert "\n\n\n\n" not in text, f"{path.name}: a run of 3 or more blank lines"
        assert text.count("envs/taskalign.yaml") == (path.name == "common.smk"), path.name
