"""Tasks as data: what differs between tasks is a field of its TaskType, and models, losses, samples and scores
read the fields, never a task's name."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from taskalign.data.labels import N_SECTORS, PIRADS_CLASSES
from taskalign.tasks.losses import LOSSES, class_weights, task_loss
from taskalign.tasks.augment import augmentation
from taskalign.tasks.spec import TASK_TYPES, Task, TaskType

CHANNELS = ["t2w", "dwi", "adc"]


def task(name: str, type_: TaskType | None = None) -> Task:
    return Task(name, type_ or TASK_TYPES[name], "anatomy", tuple(CHANNELS))


def test_every_task_type_names_a_known_loss_and_classification_types_their_class_values():
    assert {t.loss for t in TASK_TYPES.values()} <= set(LOSSES)
    assert TASK_TYPES["pirads_cls"].classes == PIRADS_CLASSES
    assert TASK_TYPES["sector_cls"].classes == tuple(range(N_SECTORS))
    with pytest.raises(ValueError, match="one class value per output"):
        TaskType("classification", "pirads", 3, "auc", "cross_entropy", classes=(2, 3))


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
    from taskalign.models.encoder import Encoder, EncoderGeometry
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


def test_no_stage_outside_tasks_branches_on_a_task_name():
    import re
    from pathlib import Path

    names = "|".join(TASK_TYPES)
    branch = re.compile(rf"task\.name\s*(==|!=|in\b|not in\b)|(==|!=)\s*\"({names})\"|\"({names})\"\s*(==|!=)")
    src = Path(__file__).resolve().parents[1] / "src" / "taskalign"
    found = [f"{path.relative_to(src)}:{i}: {line.strip()}"
             for package in ("models", "train", "evaluate", "analysis")
             for path in sorted((src / package).rglob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert not found, "\n".join(found)
