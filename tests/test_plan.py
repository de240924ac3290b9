"""The experiment plan: jobs and paths from the config, and the config cross-checks as plan errors."""

from __future__ import annotations

import copy

import pytest

from conftest import TEST_CONFIG, plan_of
from taskalign.plan import Plan, PlanError, layout
from taskalign.plan import outputs as paper


@pytest.fixture(scope="module")
def plan() -> Plan:
    return plan_of(TEST_CONFIG)


def test_runs_are_the_matrix_in_config_order_without_repeats(plan):
    # random frozen on every task + 11 configured on named tasks + the imported ConvNeXt frozen on 3 + 4 of the
    # objective ablation
    assert len(plan.runs) == len(set(plan.runs)) == len(plan.tasks) + 11 + 3 + 4
    assert layout.Run("volume_reg", "pretrained:convnext", "frozen", 0) in plan.runs
    assert plan.runs[0] == layout.Run("pirads_cls", "random", "frozen", 0)
    assert layout.Run("zone_seg", "pretrained:mae", "partial:2", 0) in plan.runs
    assert plan.inits["pretrained-mae"] == "pretrained:mae" and plan.protocols["partial-2"] == "partial:2"


def test_feature_runs_leave_out_frozen_runs_and_specialists(plan):
    assert all(r.protocol != "frozen" and r.init != "specialist" for r in plan.feature_runs)
    assert len(plan.feature_runs) == 9


def test_paths_come_from_one_layout(plan):
    run = layout.Run("zone_seg", "pretrained:mae", "partial:2", 0)
    assert layout.run_file("finetune", run, "model.safetensors") == \
        "results/finetune/zone_seg/pretrained-mae/partial-2/seed0/model.safetensors"
    assert layout.run_features(run) == "results/features/zone_seg/pretrained-mae/partial-2/seed0.npz"
    assert plan.init_encoder("scratch") == layout.pretrained_encoder("random")
    assert plan.init_encoder("continual:mae") == "results/continual/mae/encoder.safetensors"
    assert plan.init_encoder("specialist") is None
    # the wildcard form the rules use is the same function
    wild = layout.Run("{task}", "{init}", "{protocol}", "{seed}")
    assert layout.run_file("evaluate", wild, "x") == f"results/evaluate/{layout.RUN_PATTERN}/x"


def test_config_digest_is_stable_and_names_the_record():
    a, b = {"x": 1, "y": [1, 2]}, {"y": [1, 2], "x": 1}
    assert layout.config_digest(a) == layout.config_digest(b) and len(layout.config_digest(a)) == 12
    assert layout.config_digest(a) != layout.config_digest({"x": 2, "y": [1, 2]})
    assert layout.config_record(a).endswith(f"config-{layout.config_digest(a)}.json")


def test_cka_pairs_and_analysis_tasks(plan):
    pairs = plan.cka_pairs("zone_seg")
    assert pairs[0]["pair"] == "pretrained-continual"
    assert {p["pair"] for p in pairs} == {"pretrained-continual", "pretrained-finetuned", "continual-finetuned",
                                          "continual-finetuned_from_continual"}
    # 000 Table 6: both Finetuned rows of a seed compare with ONE fine-tuned encoder, the pretrained init's
    ft = {(p["protocol"], p["seed"]): p["b"] for p in pairs if p["pair"] == "pretrained-finetuned"}
    assert ft and all(p["b"] == ft[p["protocol"], p["seed"]] for p in pairs if p["pair"] == "continual-finetuned")
    assert all("/pretrained-mae/" in path for path in ft.values())
    # each pair names its encoders (the CKA tables' encoder_a/b), so the CKA stage parses no path
    named = {(p["pair"], p["protocol"], p["seed"]): (p["encoder_a"], p["encoder_b"]) for p in pairs}
    assert named["pretrained-continual", "", ""] == ("pretrained-mae", "continual-mae")
    assert named["continual-finetuned", "full", 0] == ("continual-mae", "pretrained-mae/full/seed0")
    assert named["continual-finetuned", "partial:2", 0] == ("continual-mae", "pretrained-mae/partial-2/seed0")
    assert plan.mmd_tasks == ["volume_reg", "zone_seg", "super_res"]
    assert plan.lens_runs("zone_seg") == [layout.Run("zone_seg", "pretrained:mae", "full", 0)]
    assert plan.radiomics_cohorts == ["anatomy", "promis", "ucl"]


def test_paper_outputs_and_their_inputs(plan):
    tables = paper.paper_tables(plan)
    assert tables[0] == "000_table1_cohorts" and "000_table6_cka" in tables and "001_table1_compute" in tables
    inputs = paper.table_inputs(plan, "000_table4_segmentation")
    assert inputs["metrics"] == layout.collected_metrics()
    assert all(row[-1].endswith("/cases.csv") and row[0] in ("zone_seg", "lesion_seg") for row in inputs["cases"])
    assert set(paper.input_paths(inputs)) == {inputs["metrics"], *(row[-1] for row in inputs["cases"])}
    files = paper.paper_outputs(plan, "003")
    assert "results/tables/003_lens_summary.csv" in files and all("/003_" in f for f in files)


def broken(edit) -> PlanError:
    config = copy.deepcopy(TEST_CONFIG)
    edit(config)
    with pytest.raises(PlanError) as err:
        plan_of(config)
    return err.value


def test_unknown_references_are_all_reported_at_once():
    def edit(c):
        c["pretrain"]["cohorts"] = ["nowhere"]
        c["continual"]["cohort"] = "elsewhere"
        c["tasks"]["zone_seg"]["cohort"] = "missing"
        c["analysis"]["models"] = [{"variant": "nope"}]
    err = broken(edit)
    assert len(err.problems) == 4
    text = str(err)
    for expected in ("pretrain.cohorts: unknown cohort 'nowhere'", "continual.cohort: unknown cohort 'elsewhere'",
                     "tasks.zone_seg.cohort: unknown cohort 'missing'",
                     "analysis.models[0].variant: 'nope' is not in pretrain.variants"):
        assert expected in text


def test_bad_runs_name_their_block():
    def edit(c):
        c["finetune"]["runs"] = [{"tasks": ["zone_seg", "nosuch"], "inits": ["pretrained:gone", "scratch"],
                                  "protocols": ["frozen"]}]
    text = str(broken(edit))
    assert "finetune.runs[0].tasks: unknown task 'nosuch'" in text
    assert "finetune.runs[0]: init pretrained:gone: no pretrain variant 'gone'" in text
    assert "init scratch runs with protocol full only, not frozen" in text


def test_task_knobs_are_required():
    err = broken(lambda c: c["tasks"]["super_res"].pop("factor"))
    assert err.problems == ["tasks.super_res: type super_res needs 'factor'"]


def test_a_task_type_must_exist_and_take_the_options_given():
    def edit(c):
        c["tasks"]["lesion_seg"]["type"] = "lesion_segmentation"
        c["tasks"]["zone_seg"]["factor"] = 2
        c["tasks"]["volume_reg"]["loss"] = "nosuch"
        c["tasks"]["volume_reg"]["random_inputs"] = ["adc", "t2w"]  # volume_reg sees t2w only
    problems = broken(edit).problems
    assert problems[0].startswith("tasks.volume_reg.loss: unknown loss 'nosuch'; known: cross_entropy, mse")
    assert problems[1].startswith("tasks.volume_reg.random_inputs: needs 2+ of the task's inputs")
    assert problems[2].startswith("tasks.lesion_seg.type: unknown task type 'lesion_segmentation'; known types: "
                                  "pirads_cls, sector_cls")
    assert problems[3] == ("tasks.zone_seg.factor: not an option of type zone_seg (its options: loss, "
                           "random_inputs)")


def test_split_fractions_must_sum_to_one():
    def edit(c):
        c["data"]["split"] = {"fractions": {"train": 0.7, "val": 0.1, "test": 0.1}}
    assert "data.split.fractions: train + val + test = 0.9, must be 1" in str(broken(edit))


def test_a_task_cohort_without_val_cases_fails_before_any_job():
    err = broken(lambda c: c["data"]["cohorts"]["anatomy"].update(splits=[4, 0, 2]))
    assert err.problems == ["tasks.distortion, tasks.zone_seg: cohort 'anatomy' has no val cases "
                            "(to pick the best epoch)"]


def test_continual_needs_no_test_cases_but_tasks_do():
    def edit(c):
        c["data"]["cohorts"]["extra"] = {"source": "phantom", "splits": [4, 2, 0]}
        c["continual"]["cohort"] = "extra"
    config = copy.deepcopy(TEST_CONFIG)
    edit(config)
    assert plan_of(config).continual["cohort"] == "extra"
    err = broken(lambda c: (edit(c), c["tasks"]["zone_seg"].update(cohort="extra")))
    assert err.problems == ["tasks.zone_seg: cohort 'extra' has no test cases (to score)"]


def test_an_unlabelled_cohort_serves_pretraining_only():
    def edit(c):
        c["data"]["cohorts"]["corpus"]["labelled"] = False
        c["tasks"]["volume_reg"]["cohort"] = "corpus"
    try:
        err = broken(edit)
    except Exception as schema_error:  # before the data layer's `labelled` key reaches the schema
        pytest.skip(f"schema has no `labelled` yet: {schema_error}")
    assert any("cohort 'corpus' has no labels (labelled: false)" in p for p in err.problems)


def test_a_one_case_pretraining_pool_is_refused():
    def edit(c):
        c["pretrain"]["cohorts"] = ["tiny"]
        c["data"]["cohorts"]["tiny"] = {"source": "phantom", "splits": [1, 0, 0]}
    err = broken(edit)
    assert err.problems == ["pretrain.cohorts: 1 train case(s) in tiny; pretraining holds out holdout_fraction of "
                            "them and needs at least 2"]


def test_retarget_points_every_reference_at_one_cohort():
    from taskalign.plan.retarget import retarget

    config = retarget(TEST_CONFIG, "mine", {"source": "manifest", "path": "/data/m.csv"},
                      tasks=["zone_seg", "volume_reg"])
    assert list(config["data"]["cohorts"]) == ["mine"]
    assert config["pretrain"]["cohorts"] == ["mine"] and config["continual"]["cohort"] == "mine"
    assert set(config["tasks"]) == {"zone_seg", "volume_reg"}
    assert all(spec["cohort"] == "mine" for spec in config["tasks"].values())
    plan = plan_of(config)  # the result is a config the plan accepts in one go
    assert {r.task for r in plan.runs} == {"zone_seg", "volume_reg"}
    assert TEST_CONFIG["continual"]["cohort"] == "promis"  # the input is left alone
    with pytest.raises(ValueError, match="unknown task"):
        retarget(TEST_CONFIG, "mine", {"source": "manifest", "path": "x"}, tasks=["nosuch"])
    # a config from before task types: the names were the types, and the retargeted config says so
    untyped = copy.deepcopy(TEST_CONFIG)
    for spec in untyped["tasks"].values():
        del spec["type"]
    config = retarget(untyped, "mine", {"source": "manifest", "path": "x"}, tasks=["zone_seg"])
    assert config["tasks"]["zone_seg"]["type"] == "zone_seg"
    untyped["tasks"]["zones_b"] = untyped["tasks"].pop("zone_seg")
    with pytest.raises(ValueError, match="tasks.zones_b: no 'type' and the name is no task type"):
        retarget(untyped, "mine", {"source": "manifest", "path": "x"})


def test_compared_models_each_get_their_own_protocol(plan):
    labels = [plan.model_label(m) for m in plan.models]
    assert labels == ["pretrained:mae/full", "pretrained:mae/partial:2", "pretrained:convnext/frozen"]
    inputs = plan.mmd_inputs()
    assert set(inputs["pretrained:mae/full"]) == {"volume_reg", "zone_seg", "super_res"}
    assert set(inputs["pretrained:mae/partial:2"]) == {"zone_seg"}
    assert inputs["pretrained:mae/partial:2"]["zone_seg"]["finetuned"] == [
        "results/features/zone_seg/pretrained-mae/partial-2/seed0.npz"]
    # a frozen encoder cannot move: its fine-tuned features are its pretrained encoder's
    frozen = {"variant": "mae", "protocol": "frozen"}
    assert plan.model_features("zone_seg", frozen, 0) == "results/features/zone_seg/pretrained-mae.npz"
    files = paper.table_inputs(plan, "001_table1_compute")["timings"]
    assert {(row[1], row[2]) for row in files} == {("pretrained:mae", "full"), ("pretrained:mae", "partial:2"),
                                                   ("pretrained:convnext", "frozen"), ("scratch", "full")}


def test_a_compared_model_without_scratch_runs_simply_has_no_distances():
    """A config slice (a few fine-tunes, no scratch) is no error: the model has no task for D2S and RPG."""
    config = copy.deepcopy(TEST_CONFIG)
    config["analysis"]["models"].append({"variant": "multitask", "protocol": "partial:3"})
    plan = plan_of(config)
    assert plan.model_tasks(plan.models[-1]) == [] and "pretrained:multitask/partial:3" not in plan.mmd_inputs()


def test_the_ablation_is_cumulative_reuses_variants_and_is_fine_tuned(plan):
    assert plan.ablation_steps == [
        ("reconstruction", "mae", ["reconstruction"]),
        ("+metadata", "ablation2", ["reconstruction", "metadata"]),
        ("+translation", "ablation3", ["reconstruction", "metadata", "translation"]),
        ("+contrastive", "multitask", ["reconstruction", "metadata", "translation", "contrastive"])]
    assert plan.variants["ablation2"] == {"source": "train", "objectives": ["reconstruction", "metadata"]}
    assert "ablation2" in plan.trained_variants and "pretrained-ablation2" not in plan.base_encoders
    ablation_runs = [r for r in plan.runs if r.protocol == "frozen" and r.init.startswith("pretrained:")
                     and r.init != "pretrained:convnext"]  # the test config's imported second family
    assert [r.init for r in ablation_runs] == ["pretrained:mae", "pretrained:ablation2", "pretrained:ablation3",
                                               "pretrained:multitask"]
    assert all(r.task == "volume_reg" for r in ablation_runs)
    assert "002_table5_ablation" in paper.paper_tables(plan)


def test_only_a_distortion_cohort_caches_the_distance_field(plan):
    assert plan.cache_fields("anatomy") == ["rectum_distance"]  # distortion's cohort in the test config
    assert plan.cache_fields("promis") == [] and plan.cache_fields("corpus") == []


def test_the_order_of_tasks_and_cohorts_in_the_config_changes_no_report_params(plan):
    """The report rules' params (named inputs, settings) are rerun triggers: a config saved with its keys in
    another order must rerun nothing."""
    import json

    config = copy.deepcopy(TEST_CONFIG)
    config["tasks"] = dict(reversed(list(config["tasks"].items())))
    config["data"]["cohorts"] = dict(reversed(list(config["data"]["cohorts"].items())))
    shuffled = plan_of(config)

    def params(p):
        names = paper.paper_tables(p) + paper.paper_figures(p)
        inputs = {n: paper.table_inputs(p, n) if n in paper.paper_tables(p) else paper.figure_inputs(p, n)
                  for n in names}
        return json.dumps([inputs, paper.report_settings(p, figure=True)], sort_keys=True)

    assert sorted(paper.paper_tables(plan)) == sorted(paper.paper_tables(shuffled))
    assert params(plan) == params(shuffled)


def test_the_manifest_checks_params_do_not_follow_the_order_tasks_are_listed_in():
    """A config dumped with sorted keys (or tasks reordered by hand) must not rerun check_manifest and everything
    after it: the split needs name their users sorted."""
    from taskalign.plan import params

    config = copy.deepcopy(TEST_CONFIG)
    config["tasks"] = dict(reversed(list(config["tasks"].items())))
    reordered = plan_of(config)
    plan = plan_of(TEST_CONFIG)
    for cohort in plan.cohorts:
        assert params.check(reordered, cohort) == params.check(plan, cohort), cohort
