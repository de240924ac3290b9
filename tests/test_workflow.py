"""The workflow as a whole: lint, config validation, DAG planning at every scale, setup consistency."""

from __future__ import annotations

import re

import yaml

from conftest import REPO, run_snakemake


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    table = dry_run_stdout.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def test_lint_passes():
    proc = run_snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_paper_config_plans_its_dag():
    proc = run_snakemake("-n", "--configfile", "config/paper.yaml")
    counts = job_counts(proc.stdout)
    assert counts["cohort"] == 5 and counts["preprocess"] == 5 and counts["check_manifest"] == 5
    # tasks x 3 seeds x (random frozen + 4 inits full + 001's imported FMs: the ConvNeXt V2 frozen and the
    # DINOv2 partial:2 + 002's ablation steps, fine-tuned `full`, that are not run otherwise: ablation2,
    # mt_no_contrastive and multitask; its first step, mae full, and its scratch baseline are already there)
    n_tasks = len(yaml.safe_load((REPO / "config/paper.yaml").read_text())["tasks"])
    assert counts["finetune"] == counts["evaluate"] == n_tasks * 3 * (7 + 3)
    assert counts["pretrain"] == 6 and counts["mmd"] == 1  # 5 configured variants + ablation2
    assert counts["import_encoder"] == 2  # 001's two FMs, imported checkpoints


def test_paper001_config_plans_001s_five_tasks_and_fig2(tmp_path):
    """001 as 001 ran it: five tasks, its reference models and two FMs, Fig. 2 over exactly these tasks."""
    from conftest import plan_of
    from taskalign.plan import layout, outputs

    config = yaml.safe_load((REPO / "config/paper001.yaml").read_text())
    plan = plan_of(config)
    assert list(plan.tasks) == list(plan.mmd_tasks) == ["pirads_cls", "lesion_seg", "super_res", "distortion",
                                                          "translation"]
    assert [plan.task(t).kind.name for t in plan.tasks] == ["ordinal_classification", "segmentation", "restoration",
                                                            "restoration", "ddpm_translation"]
    assert plan.task("lesion_seg").loss == "tversky" and plan.task("super_res").option("factor") == 2
    assert "001_fig2_rpg_vs_distance" in outputs.paper_figures(plan)
    # D2P at the head level: the frozen FM's runs have features of their own, compared with the pretrained
    # encoder under the task head at its initialisation
    assert plan.imported_variants == ["profound", "provicnet"]  # 001's FMs, imported checkpoints
    frozen = plan.mmd_inputs()["pretrained:profound/frozen"]["pirads_cls"]
    assert frozen["finetuned"][0] == layout.run_features(layout.Run("pirads_cls", "pretrained:profound", "frozen", 0))
    assert frozen["pretrained"] == layout.base_features("pirads_cls", "pretrained-profound")
    assert layout.Run("pirads_cls", "pretrained:profound", "frozen", 0) in plan.feature_runs
    assert layout.Run("pirads_cls", "random", "frozen", 0) not in plan.feature_runs
    proc = run_snakemake(*outputs.paper_outputs(plan, "001"), "-n", "--configfile", "config/paper001.yaml")
    counts = job_counts(proc.stdout)
    # 5 tasks x 3 seeds x (random frozen, scratch, specialist, profound frozen, provicnet partial:2)
    assert counts["finetune"] == counts["evaluate"] == 5 * 3 * 5 and counts["mmd"] == counts["rpg"] == 1
    assert counts["import_encoder"] == 2 and "pretrain" not in counts  # the /path/to placeholders plan


def test_a_task_of_an_existing_type_on_another_cohort_reaches_its_tables(tmp_path):
    """A ninth task through the config alone: a second lesion segmentation, on the risk cohort."""
    from conftest import plan_of
    from taskalign.plan import layout, outputs

    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["tasks"]["lesion_seg_risk"] = {"type": "lesion_seg", "cohort": "risk", "inputs": ["t2w", "adc"]}
    plan = plan_of(config)
    table = outputs.table_inputs(plan, "000_table4_segmentation")["cases"]
    assert [row[:4] for row in table if row[0] == "lesion_seg_risk"] == [["lesion_seg_risk", "random", "frozen", 0]]
    path = tmp_path / "ninth.yaml"
    path.write_text(yaml.safe_dump(config))
    targets = layout.table_files("000_table4_segmentation")
    proc = run_snakemake(*targets, "-n", "--configfile", str(path))
    run = layout.Run("lesion_seg_risk", "random", "frozen", 0)
    assert layout.run_file("finetune", run, "model.safetensors") in proc.stdout
    assert layout.run_file("evaluate", run, "cases.csv") in proc.stdout


def test_misspelt_key_is_an_error_that_names_it(tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["preprocess"]["spacng_mm"] = cfg["preprocess"].pop("spacing_mm")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake("-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "'spacng_mm' was unexpected" in proc.stdout + proc.stderr


def test_wrong_type_is_an_error(tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["data"]["cohorts"]["risk"]["source"] = "phantm"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake("-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0 and "phantm" in proc.stdout + proc.stderr


def test_configfile_replaces_the_default_config(tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    del cfg["data"]["cohorts"]["corpus"]
    cfg["pretrain"]["cohorts"] = ["risk"]
    path = tmp_path / "no_corpus.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake("-n", "--configfile", str(path))
    assert job_counts(proc.stdout)["cohort"] == 4
    assert "results/cohorts/corpus" not in proc.stdout


def test_user_manifest_cohort_skips_generation(tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["data"]["cohorts"] = {"mine": {"source": "manifest", "path": str(tmp_path / "m.csv")}}
    cfg["pretrain"]["cohorts"] = ["mine"]
    cfg["continual"]["cohort"] = "mine"
    cfg["tasks"] = {name: {**spec, "cohort": "mine"} for name, spec in cfg["tasks"].items()}
    (tmp_path / "m.csv").write_text("case_id\n")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    counts = job_counts(run_snakemake("-n", "--configfile", str(path)).stdout)
    assert "cohort" not in counts and counts["check_manifest"] == 1


def test_conda_env_carries_the_same_pins_as_the_pip_setup():
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    env = yaml.safe_load((REPO / "envs/taskalign.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = dict(p.lower().split("==") for p in pip)
    assert env_pins.pop("torch") == "2.13.0"
    assert "torch==2.13.0" in (REPO / "Makefile").read_text()
    for name, version in env_pins.items():
        assert pins[name] == version, f"{name}: envs/taskalign.yaml pins {version}, requirements.txt {pins.get(name)}"


def test_slurm_profile_is_found_from_the_root():
    assert (REPO / "slurm").resolve() == (REPO / "profiles/slurm").resolve()
    # Snakemake applies profiles/default to every run: it may only make failures visible, never change scheduling
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert default == {"show-failed-logs": True}


def test_config_names_must_refer_to_defined_things(tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["continual"]["variants"] = ["mae", "maee"]
    cfg["pretrain"]["cohorts"] = ["corpus", "nope"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = run_snakemake("-n", "--configfile", str(bad), check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "continual.variants: unknown encoder 'maee'" in text and "pretrain.cohorts: unknown cohort 'nope'" in text


def test_finetune_runs_that_make_no_sense_are_errors_naming_them(tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["finetune"]["runs"] = [
        {"inits": ["random"], "protocols": ["full"]},
        {"tasks": ["zone_sg"], "inits": ["continual:multitask"]},
    ]
    cfg["tasks"]["super_res"].pop("factor")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = run_snakemake("-n", "--configfile", str(bad), check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "init random runs with protocol frozen only, not full" in text
    assert "unknown task 'zone_sg'" in text and "'multitask' is not in continual.variants" in text
    assert "tasks.super_res: type super_res needs 'factor'" in text

