"""End to end: the real Snakefile on config/test.yaml, from nothing to the preprocessed cache."""

from __future__ import annotations

import json
import re

import jsonschema

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, run_snakemake
from taskalign.data.labels import MANIFEST_COLUMNS

pytestmark = pytest.mark.e2e

CONFIG = yaml.safe_load((REPO / "config/test.yaml").read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    run_snakemake("--cores", "2", "--configfile", str(REPO / "config/test.yaml"), cwd=work)
    return work


def test_every_cohort_reaches_the_cache(workdir):
    size = CONFIG["preprocess"]["size"]
    channels = CONFIG["preprocess"]["channels"]
    for cohort, spec in CONFIG["data"]["cohorts"].items():
        manifest = pd.read_csv(workdir / f"results/cohorts/{cohort}/manifest.csv")
        assert list(manifest.columns) == MANIFEST_COLUMNS
        checked = pd.read_csv(workdir / f"results/manifests/{cohort}.csv")
        index = pd.read_csv(workdir / f"results/cache/{cohort}.csv")
        assert len(manifest) == len(checked) == len(index) == sum(spec["splits"])
        assert checked["split"].value_counts().reindex(["train", "val", "test"], fill_value=0).tolist() == spec["splits"]
        for row in index.itertuples():
            image = np.load(f"{row.cache_dir}/image.npy", mmap_mode="r")
            assert image.shape == (len(channels), *size) and image.dtype == np.float32
            assert np.isfinite(image).all()
            meta = json.loads((workdir / row.cache_dir / "meta.json").read_text())
            assert meta["case_id"] == row.case_id and meta["split"] == row.split
        assert len(list((workdir / f"results/qc/{cohort}").glob("*.png"))) == CONFIG["preprocess"]["qc_cases"]


def test_labelled_cohorts_carry_masks_and_computed_volumes(workdir):
    checked = pd.read_csv(workdir / "results/manifests/ucl.csv")
    assert checked["volume_ml"].between(5, 200).all(), "volume_ml is computed from the prostate mask"
    index = pd.read_csv(workdir / "results/cache/anatomy.csv")
    zones = np.load(f"{index.cache_dir[0]}/zones.npy")
    assert zones.shape == tuple(CONFIG["preprocess"]["size"]) and zones.max() <= 8 and zones.max() > 0


def test_a_second_run_has_nothing_to_do(workdir):
    proc = run_snakemake("-n", "--cores", "2", "--configfile", str(REPO / "config/test.yaml"), cwd=workdir)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_preprocessing_reruns_only_preprocessing(workdir, tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["preprocess"]["qc_cases"] = 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake("-n", "--cores", "2", "--configfile", str(changed), cwd=workdir)
    jobs = proc.stdout.split("Job stats:")[1]
    assert "preprocess" in jobs and "cohort " not in jobs and "check_manifest" not in jobs


def test_real_cohorts_run_through_importers_check_and_preprocessing(shared_data, tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    # The phantom cohorts stay for the tasks: a one-case cohort has no val or test cases to fine-tune on
    cfg["data"]["cohorts"] = {
        **cfg["data"]["cohorts"],
        "picai": {"source": "picai", "path": str(shared_data / "picai-sample")},
        "prostatex": {
            "source": "dicom",
            "path": str(shared_data / "prostatex-dicom"),
            "options": {"on_duplicate": "latest"},
        },
    }
    cfg["pretrain"]["cohorts"] = ["picai"]
    config = tmp_path / "real.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # The two samples are one study (PI-CAI 10795 is ProstateX-0001's MRI), in the train split of both cohorts: the
    # leakage check names it as a warning (in two splits it would stop the run before preprocessing)
    run_snakemake("data", "--cores", "2", "--configfile", str(config), cwd=tmp_path)
    log = (tmp_path / "results/logs/data/shared_studies.log").read_text()
    assert "the same study (T2W correlation" in log and "occurs 2 times in split train" in log
    assert "cohort picai case 10795_1000811" in log and "cohort prostatex case ProstateX-0001" in log
    picai = pd.read_csv(tmp_path / "results/cache/picai.csv")
    prostatex = pd.read_csv(tmp_path / "results/cache/prostatex.csv")
    assert len(picai) == len(prostatex) == 1
    meta = json.loads((tmp_path / picai.cache_dir[0] / "meta.json").read_text())
    assert meta["channels_present"] == ["t2w", "dwi", "adc"]
    assert abs(meta["volume_ml_cache"] - meta["volume_ml_native"]) < 0.03 * meta["volume_ml_native"]
    assert np.load(tmp_path / prostatex.cache_dir[0] / "image.npy").shape[0] == 3
    assert (tmp_path / "results/qc/picai" / f"{picai.case_id[0]}.png").exists()


def test_checked_manifests_follow_the_manifest_schema(workdir):
    schema = yaml.safe_load((REPO / "workflow/schemas/manifest.schema.yaml").read_text())
    assert list(schema["properties"]) == MANIFEST_COLUMNS
    validator = jsonschema.Draft202012Validator(schema)
    for cohort in CONFIG["data"]["cohorts"]:
        checked = pd.read_csv(workdir / f"results/manifests/{cohort}.csv", dtype={"case_id": str, "patient_id": str})
        for record in checked.astype(object).where(checked.notna(), None).to_dict("records"):
            errors = [e.message for e in validator.iter_errors(record)]
            assert not errors, (cohort, record["case_id"], errors)


def test_encoders_are_pretrained_and_continual_encoders_are_merged(workdir):
    from safetensors.torch import load_file

    from taskalign.models.checkpoint_io import geometry_of

    geometry = geometry_of(workdir / "results/pretrain/random/encoder.safetensors")
    assert geometry.img_size == tuple(CONFIG["preprocess"]["size"]) and geometry.hidden_size == CONFIG["encoder"]["hidden_size"]
    trained = [v for v, spec in CONFIG["pretrain"]["variants"].items() if spec["source"] == "train"]
    for variant in trained:
        history = pd.read_csv(workdir / f"results/pretrain/{variant}/history.csv")
        assert len(history) == CONFIG["pretrain"]["epochs"] and np.isfinite(history["val_total"]).all()
        assert geometry_of(workdir / f"results/pretrain/{variant}/encoder.safetensors") == geometry
    for variant in CONFIG["continual"]["variants"]:
        pretrained = load_file(workdir / f"results/pretrain/{variant}/encoder.safetensors")
        merged = load_file(workdir / f"results/continual/{variant}/encoder.safetensors")
        assert set(merged) == set(pretrained)
        changed = {k for k in merged if not np.array_equal(merged[k].numpy(), pretrained[k].numpy())}
        assert changed and all(k.split(".")[-2] in ("to_q", "to_k", "to_v", "out_proj") for k in changed), changed
        history = pd.read_csv(workdir / f"results/continual/{variant}/history.csv")
        assert len(history) == CONFIG["continual"]["epochs"] and history["val_dice"].between(0, 1).all()
        assert (workdir / f"results/continual/{variant}/dice_curve.png").stat().st_size > 0


def test_the_example_convnext_checkpoint_is_imported_with_its_load_report(workdir):
    """The second family of the test config: ProFound's FCMAE checkpoint layout, imported by the import_encoder
    rule from the repository's config/checkpoints (a relative path, resolved from a fresh working directory)."""
    from taskalign.models.checkpoint_io import EncoderFile, read_metadata

    spec = CONFIG["pretrain"]["variants"]["convnext"]
    path = workdir / "results/pretrain/convnext/encoder.safetensors"
    encoder = EncoderFile.read(path)
    assert encoder.family == spec["family"] and list(encoder.contract.channels) == spec["input"]["channels"]
    report = read_metadata(path)["load_report"]
    assert report["layout"] == "profound_fcmae" and report["source"] == str(REPO / spec["path"])
    assert {"mask_token", "pred.weight", "proj.weight"} <= set(report["ignored"])
    assert any("norm.weight, norm.bias not in the FCMAE checkpoint" in note for note in report["notes"])


def test_every_configured_run_is_evaluated_with_metrics_in_range(workdir):
    from taskalign.tasks.spec import TASK_TYPES

    runs = pd.read_csv(workdir / "results/evaluate/metrics.csv")
    expected = set()
    for block in CONFIG["finetune"]["runs"]:
        tasks = CONFIG["tasks"] if block.get("tasks", "all") == "all" else block["tasks"]
        expected |= {(t, i, p) for t in tasks for i in block["inits"] for p in block.get("protocols", ["full"])}
    ablation = CONFIG["pretrain"]["ablation"]  # 002 Table 5's sweep: its steps' encoders fine-tuned too
    steps = {"mae", "ablation2", "ablation3", "multitask"}
    expected |= {(t, f"pretrained:{v}", ablation["protocol"]) for t in ablation["tasks"] for v in steps}
    assert set(zip(runs["task"], runs["init"], runs["protocol"])) == expected
    unbounded = {"mse", "mae_ml", "l1"}
    values = runs[~runs["metric"].isin(unbounded)]["value"].dropna()
    assert values.between(-1, 1).all() and (runs[runs["metric"].isin(unbounded)]["value"] >= 0).all()
    for task, init, protocol in expected:
        folder = workdir / f"results/evaluate/{task}/{init.replace(':', '-')}/{protocol.replace(':', '-')}/seed0"
        cases = pd.read_csv(folder / "cases.csv", dtype={"case_id": str})
        manifest = pd.read_csv(workdir / f"results/manifests/{CONFIG['tasks'][task]['cohort']}.csv", dtype={"case_id": str})
        joined = cases.merge(manifest, on="case_id", how="left", validate="one_to_one")
        assert joined["split"].eq("test").all(), (task, init)
        history = pd.read_csv(workdir / f"results/finetune/{task}/{init.replace(':', '-')}/{protocol.replace(':', '-')}/seed0/history.csv")
        assert f"val_{TASK_TYPES[task].metric}" in history and len(history) == CONFIG["finetune"]["epochs"]


def test_a_head_change_reruns_encoder_runs_only(workdir, tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["finetune"]["head"]["mlp_hidden"] = 32
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake("-n", "--cores", "2", "--configfile", str(changed), cwd=workdir)
    planned = set(re.findall(r"results/finetune/(\w+/[\w-]+/[\w-]+)/seed0/model.safetensors", proc.stdout))
    assert planned and not any("/specialist/" in p for p in planned)
    assert "rule pretrain:" not in proc.stdout and "rule continual:" not in proc.stdout


def planned_jobs(workdir, tmp_path, change) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run plans after `change(cfg)` on the test config."""
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    change(cfg)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    out = run_snakemake("-n", "--cores", "2", "--configfile", str(changed), cwd=workdir).stdout
    jobs = []
    for line in out.splitlines():
        rule = re.match(r"(?:local)?rule (\w+):", line)
        if rule:
            jobs.append([rule[1], ""])
        elif jobs and line.strip().startswith("wildcards:"):
            jobs[-1][1] = line.split("wildcards:", 1)[1].strip()
    return [(rule, wildcards) for rule, wildcards in jobs if rule != "all"]


def test_one_tasks_learning_rate_reruns_only_that_task(workdir, tmp_path):
    jobs = planned_jobs(workdir, tmp_path, lambda c: c["tasks"]["zone_seg"].update(finetune={"lr": 0.01}))
    runs = [r for r in CONFIG["finetune"]["runs"] if r.get("tasks", "all") == "all" or "zone_seg" in r["tasks"]]
    n_zone = sum(len(r["inits"]) * len(r.get("protocols", ["full"])) for r in runs)
    rules = {rule for rule, _ in jobs}
    assert {"finetune", "evaluate", "collect_metrics"} <= rules
    assert not rules & {"cohort", "preprocess", "pretrain", "continual", "features", "radiomics"}
    assert all("task=zone_seg" in w for _, w in jobs if "task=" in w)
    assert sum(rule == "finetune" for rule, _ in jobs) == n_zone


def test_a_pretraining_setting_reruns_everything_downstream_of_pretraining(workdir, tmp_path):
    jobs = planned_jobs(workdir, tmp_path, lambda c: c["pretrain"].update(mask_ratio=0.6))
    rules = {rule for rule, _ in jobs}
    assert {"pretrain", "continual", "finetune", "evaluate"} <= rules
    assert not rules & {"cohort", "check_manifest", "preprocess", "random_encoder"}
    finetuned = {w for rule, w in jobs if rule == "finetune"}
    assert finetuned and all("init=pretrained-" in w or "init=continual-" in w for w in finetuned)


def test_a_figure_setting_reruns_only_figures(workdir, tmp_path):
    jobs = planned_jobs(workdir, tmp_path, lambda c: c["report"]["style"].update(dpi=90))
    assert jobs and {rule for rule, _ in jobs} == {"figure"}


def test_features_cover_every_encoder_and_task_by_case_id(workdir):
    width = CONFIG["encoder"]["hidden_size"]
    vit = {f"block{n}": width for n in CONFIG["analysis"]["layers"]["vit3d"]} | {"final": width}
    dims = CONFIG["pretrain"]["variants"]["convnext"]["geometry"]["dims"]  # the ConvNeXt's levels: its 4 stages
    convnext = {f"stage{n + 1}": dims[n] for n in CONFIG["analysis"]["layers"]["convnextv2_3d"]} | {"final": dims[-1]}
    for task, spec in CONFIG["tasks"].items():
        index = pd.read_csv(workdir / f"results/cache/{spec['cohort']}.csv")
        for encoder, layers in [("random", vit), ("pretrained-mae", vit), ("continual-mae", vit),
                                ("pretrained-convnext", convnext)]:
            with np.load(workdir / f"results/features/{task}/{encoder}.npz") as data:
                assert set(data["case_id"]) <= set(index["case_id"])
                for layer, channels in layers.items():
                    assert data[layer].shape == (len(data["case_id"]), channels), (task, encoder, layer)
                    assert np.isfinite(data[layer]).all()


def test_analysis_tables_hold_values_in_valid_ranges(workdir):
    cka = pd.read_csv(workdir / "results/analysis/cka.csv")
    assert {"pretrained-continual", "pretrained-finetuned", "continual-finetuned"} <= set(cka["pair"])
    assert cka["linear"].between(-1e-9, 1 + 1e-9).all() and (cka["debiased"].dropna() <= 1 + 1e-9).all()
    diagonal = cka[cka["layer_a"] == cka["layer_b"]]
    assert diagonal["null_linear"].notna().all() and (diagonal["ci_low"] <= diagonal["ci_high"]).all()
    mmd = pd.read_csv(workdir / "results/analysis/mmd.csv")
    assert set(mmd["distance"]) == {"d2r", "d2p", "d2s"}
    # the ConvNeXt's features are not in the vit3d references' space: its D2R and D2S are undefined, D2P measured
    undefined = mmd["value"].isna()
    assert (undefined == ((mmd["model"] == "pretrained:convnext/frozen") & (mmd["distance"] != "d2p"))).all()
    mmd = mmd[~undefined]
    assert (mmd.loc[mmd["estimator"] == "biased", "value"] >= 0).all() and mmd["p_value"].between(0, 1).all()
    assert mmd["sigma"].nunique() == 1, "one sigma for every task, model and distance"
    models = [f"pretrained:{m['variant']}/{m['protocol']}" for m in CONFIG["analysis"]["models"]]
    assert set(mmd["model"]) == set(models)  # every model has its D2P
    rpg = pd.read_csv(workdir / "results/analysis/rpg.csv")
    assert set(rpg["reference"]) <= {"random", "specialist"}
    assert (np.isfinite(rpg["rpg"]) == rpg["note"].fillna("").eq("")).all()  # no RPG only with a reason
    assert set(rpg["model"]) == set(models)
    assert np.isfinite(rpg.loc[rpg["model"] == "pretrained:convnext/frozen", "rpg"]).any()  # the second family
    correlations = pd.read_csv(workdir / "results/analysis/rpg_correlations.csv")
    tasks_per_pair = rpg[np.isfinite(rpg["rpg"])].groupby(["model", "reference"])["task"].nunique()
    assert (correlations["n"] == [tasks_per_pair[m, r] for m, r in zip(correlations["model"],
                                                                       correlations["reference"])]).all()
    lens = pd.read_csv(workdir / "results/analysis/lens.csv")
    assert (lens.groupby("task")["rank"].min() == 1).all() and (lens["p_fwer"] >= lens["p_value"]).all()
    assert set(lens["group"]) <= {"intensity", "shape", "texture"}
    summary = pd.read_csv(workdir / "results/analysis/lens_summary.csv")
    assert summary["perm_p"].between(0, 1).all()
    # the lens is read only where it fits: below the R² floor a task says so instead of ranking features
    gated = ~summary["interpretable"].astype(bool)
    assert (gated == (summary[["r2_pre", "r2_ft"]].min(axis=1) < summary["r2_floor"])).all()
    assert summary.loc[gated, "note"].str.contains("below the floor").all()
    probe = pd.read_csv(workdir / "results/analysis/target_probe.csv")
    variants = CONFIG["continual"]["variants"]
    assert set(probe["encoder"]) == {f"{stage}-{v}" for stage in ("pretrained", "continual") for v in variants}
    assert len(probe) == 2 * len(variants) * len(CONFIG["continual"]["layers"])
    assert (probe["val_r2"] <= 1).all() and (probe["val_r2_low"] <= probe["val_r2_high"]).all()


def test_every_paper_table_and_figure_is_written_with_provenance(workdir):
    tables = ["000_table1_cohorts", "000_table2_classification", "000_table3_regression", "000_table4_segmentation",
              "000_table5_restoration", "000_table6_cka", "000_table6_cka_supplementary", "001_table1_compute",
              "002_table5_ablation", "003_lens_summary"]
    records = list((workdir / "results/provenance").glob("config-*.json"))
    assert len(records) == 1, "the dry runs above must not write config records"
    assert json.loads(records[0].read_text())["data"]["cohorts"].keys() == CONFIG["data"]["cohorts"].keys()
    for name in tables:
        for ext in ("csv", "md", "tex", "html"):
            assert (workdir / f"results/tables/{name}.{ext}").stat().st_size > 0, name
        provenance = json.loads((workdir / f"results/tables/{name}.provenance.json").read_text())
        assert records[0].stem == f"config-{provenance['config_hash']}"
        assert provenance["config_hash"] in (workdir / f"results/tables/{name}.md").read_text()
    # 001 Table 1 sets every compared model side by side: both families
    compute = pd.read_csv(workdir / "results/tables/001_table1_compute.csv")
    for model in [f"pretrained:{m['variant']}/{m['protocol']}" for m in CONFIG["analysis"]["models"]]:
        assert any(column.startswith(model) for column in compute.columns), (model, list(compute.columns))
    figures = ["001_fig1b_scratch_vs_finetuned", "001_fig2_rpg_vs_distance", "001_fig3_learning_curves",
               "000_fig_cka_heatmaps", "000_fig_table6_cka", "003_lens_heatmap", "003_lens_class_bars",
               "000_fig_segmentation_overlays"]
    for name in figures:
        assert (workdir / f"results/figures/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (workdir / f"results/figures/{name}.pdf").read_bytes()[:4] == b"%PDF", name


def test_the_report_gathers_every_table_and_figure(workdir):
    run_snakemake("--cores", "1", "--configfile", str(REPO / "config/test.yaml"), "--report", "results/report.html",
                  cwd=workdir)
    report = (workdir / "results/report.html").read_text()
    for name in ["000_table2_classification", "001_fig2_rpg_vs_distance", "003_lens_heatmap", "target_probe"]:
        assert name in report


def test_finished_jobs_leave_no_resume_state(workdir):
    """Resume state exists only while a job runs: the test config writes it after every epoch but the last, and
    each job removes its own once its outputs are written."""
    resume = workdir / "results/resume"
    assert not [path for path in resume.rglob("*") if path.is_file()]
    for log in ("pretrain/mae", "continual/mae", "finetune/zone_seg/pretrained-mae/full/seed0"):
        assert "resume state written" in (workdir / f"results/logs/{log}.log").read_text(), log
