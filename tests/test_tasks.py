"""Tasks as data: what differs between tasks is a field of its TaskType, and models, losses, samples and scores
read the fields, never a task's name."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from taskalign.data.labels import N_SECTORS, PIRADS_CLASSES
from taskalign.tasks.losses import LOSSES, class_weights, task_loss
from taskalign.tasks.augment import augmentation
from taskalign.tasks.kinds import CLASSIFICATION
from taskalign.tasks.spec import TASK_TYPES, Task, TaskType

CHANNELS = ["t2w", "dwi", "adc"]


def task(name: str, type_: TaskType | None = None) -> Task:
    return Task(name, type_ or TASK_TYPES[name], "anatomy", tuple(CHANNELS))


def test_every_task_type_names_a_known_loss_and_classification_types_their_class_values():
    assert {t.loss for t in TASK_TYPES.values()} <= set(LOSSES)
    assert TASK_TYPES["pirads_cls"].classes == PIRADS_CLASSES
    assert TASK_TYPES["sector_cls"].classes == tuple(range(N_SECTORS))
    with pytest.raises(ValueError, match="one class value per output"):
        TaskType(CLASSIFICATION, "pirads", 3, "cross_entropy", classes=(2, 3))


def test_a_ddpm_task_samples_in_at_most_its_schedules_steps():
    from taskalign.tasks.spec import task_problems

    spec = {"type": "translation_ddpm", "cohort": "x", "inputs": ["t2w"], "timesteps": 10}
    assert task_problems("t2w_to_dwi", {**spec, "sample_steps": 10}) == []
    assert task_problems("t2w_to_dwi", spec) == [  # the default 50 sampling steps
        "tasks.t2w_to_dwi.sample_steps: 50 sampling steps, more than the schedule's 10 timesteps"]
    assert task_problems("volume", {"type": "volume_reg", "cohort": "x", "inputs": ["t2w"]}) == []


def test_class_weights_are_inverse_frequencies_for_weighted_tasks_only():
    rows = pd.DataFrame({"pirads": [2, 2, 2, 3, 4, 4], "sector": [0, 1, 2, 3, 4, 5]})
    weights = class_weights(task("pirads_cls"), rows)
    # 6 cases over 4 classes counted 3, 1, 2, 0: 6 / (4 * count), an absent class 0
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.5, 0.75, 0.0]))
    assert class_weights(task("sector_cls"), rows) is None
    logits, target = torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 2, 2])
    torch.testing.assert_close(task_loss(task("pirads_cls"), weights, "cpu")(logits, target),
                               torch.nn.functional.cross_entropy(logits, target, weight=weights))


def test_flips_follow_the_task_type():
    flip_only = {"flip_prob": 1.0}
    assert augmentation(task("sector_cls"), flip_only, ()) is None  # the sector scheme has sides
    assert augmentation(task("pirads_cls"), flip_only, ()) is not None
    unflipped = dataclasses.replace(TASK_TYPES["pirads_cls"], flips=False)
    assert augmentation(task("pirads_cls", unflipped), flip_only, ()) is None


def test_residual_input_and_subpixel_head_follow_the_task_type():
    from taskalign.models.families.vit3d import ViT3dEncoder as Encoder, ViT3dGeometry as EncoderGeometry
    from taskalign.models.heads import encoder_model, residual_channel

    assert residual_channel(task("super_res"), CHANNELS) == residual_channel(task("distortion"), CHANNELS) == 0
    assert residual_channel(task("translation"), CHANNELS) is None
    on_adc = dataclasses.replace(TASK_TYPES["translation"], residual_input="adc")
    assert residual_channel(task("translation", on_adc), CHANNELS) == 2
    torch.manual_seed(0)
    encoder = Encoder(EncoderGeometry(3, (16, 32, 32), (4, 8, 8), 32, 64, 4, 2))
    head = {"mlp_hidden": 16, "decoder_channels": 8, "layers": [0, 1, 2, 3]}
    assert encoder_model(task("super_res"), encoder, CHANNELS, head).subpixel is not None
    assert encoder_model(task("distortion"), encoder, CHANNELS, head).subpixel is None


ROOT = Path(__file__).resolve().parents[1]


def kind_or_name_branches(root: Path) -> list[str]:
    """Lines outside src/taskalign/tasks/ (src/ and workflow/) that branch on a task's kind or name: a comparison of
    a task's kind (`task.kind ==`, `t.kind in`, `.kind.name`), a TASK_TYPES lookup (a type is the config's
    `type:`, never a name), or a kind, table group, type or configured task name as a string literal that is
    compared or keys a mapping. "translation" is also a pretraining objective (models.pretraining), so it is left
    out of the literals; its type is found by the other patterns."""
    import yaml

    from taskalign.models.pretraining import OBJECTIVES
    from taskalign.tasks.kinds import KINDS, TABLE_GROUPS

    configured = {t for path in (root / "config").glob("*.yaml")
                  for t in (yaml.safe_load(path.read_text()) or {}).get("tasks", {}) or {}}
    names = sorted(({*KINDS, *TABLE_GROUPS, *TASK_TYPES, *configured}) - set(OBJECTIVES), key=len, reverse=True)
    literal = "[\"'](" + "|".join(map(re.escape, names)) + ")[\"']"
    branch = re.compile(rf"\b(task|t|type)\.kind\s*(==|!=|\bin\b|\bnot in\b)|\.kind\.name\b|TASK_TYPES\["
                        rf"|(==|!=|\bin)\s*\(?{literal}|{literal}\s*(==|!=|\bin\b|:)")
    files = [p for p in sorted((root / "src" / "taskalign").rglob("*.py"))
             if p.relative_to(root).parts[2] != "tasks"]
    files += sorted((root / "workflow").rglob("*.smk")) + sorted((root / "workflow").rglob("Snakefile"))
    return [f"{path.relative_to(root)}:{i}: {line.strip()}" for path in files
            for i, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line.split("#")[0])]


def test_no_module_outside_tasks_branches_on_a_kind_or_a_name(tmp_path):
    found = kind_or_name_branches(ROOT)
    assert not found, "\n".join(found)
    # the check finds what it looks for: the branches the kinds replaced, in a copy of the tree
    planted = tmp_path / "src" / "taskalign" / "evaluate"
    planted.mkdir(parents=True)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "x.yaml").write_text("tasks: {prostate_seg_b: {type: zone_seg}}\n")
    (planted / "old.py").write_text('if task.kind == "segmentation":\n    pass\nRPG = {"pirads_cls": "spec"}\n'
                                    'x = TASK_TYPES[name].metric\nif name == "prostate_seg_b":\n    pass\n'
                                    'if task.kind.head_size > 2:  # an attribute, not a branch on the kind\n    pass\n')
    assert [line.split(":")[1] for line in kind_or_name_branches(tmp_path)] == ["1", "3", "4", "5"]


def test_trivial_predictions_score_the_kinds_baselines():
    """What a model that learned nothing predicts scores chance AUC and no specificity, Dice 0, the training mean's
    error, and the input's SSIM: the values evaluation's `trivial` column holds."""
    import numpy as np

    from taskalign.evaluate.metrics import pirads_positive_score, specificity_cases
    from taskalign.evaluate.scoring import case_scores, split_metrics

    norm = {"scale": 1.0, "offset": 0.0}
    pirads = task("pirads_cls")
    labels = [2, 3, 4, 5, 2, 3, 5, 2]
    image = torch.randn(3, 8, 16, 16)
    rows = [case_scores(pirads, pirads.kind.trivial_prediction(pirads, image), torch.tensor(PIRADS_CLASSES.index(c)),
                        norm) for c in labels]
    cases = pd.DataFrame(rows)
    score = pirads_positive_score(cases[[f"prob_{c}" for c in PIRADS_CLASSES]].to_numpy())
    cases["spec_at_sens90"] = specificity_cases(cases["true"] >= 3, score, score[0])
    metrics = split_metrics(pirads, cases, norm)
    assert metrics["auc"] == 0.5 and metrics["spec_at_sens90"] == 0.0

    zones = task("zone_seg")
    mask = torch.zeros(1, 8, 16, 16, dtype=torch.uint8)
    mask[0, 2:6, 4:12, 4:12] = 1
    mask[0, 3:5, 6:10, 6:10] = 2
    empty = zones.kind.trivial_prediction(zones, image)
    from taskalign.data.labels import ZONE_LABELS

    scores = case_scores(zones, empty, mask, norm)
    present = [name for name, label in ZONE_LABELS.items() if label in (1, 2)]
    assert empty.shape == (8, 16, 16) and len(present) == 2 and all(scores[f"dice_{n}"] == 0.0 for n in present)

    volume = task("volume_reg")
    targets = [torch.tensor([v]) for v in (-1.0, 0.5, 1.5)]
    cases = pd.DataFrame([case_scores(volume, volume.kind.trivial_prediction(volume, image), t, norm) for t in targets])
    assert split_metrics(volume, cases, norm)["mse"] == pytest.approx(np.mean([1.0, 0.25, 2.25]))

    restoration = task("super_res")
    returned = restoration.kind.trivial_prediction(restoration, image)
    assert np.array_equal(returned, image[0].numpy())
    assert case_scores(restoration, returned, image[:1], norm)["ssim"] == pytest.approx(1.0)
