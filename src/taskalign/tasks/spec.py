"""The eight downstream tasks (SPEC "Tasks"): what each reads from the cache, predicts, trains on and is scored by.

A task's kind decides its head, loss and metrics; its config entry (`tasks.<name>`) decides the cohort, the input
channels and the task's own knobs (super-resolution factor, distortion strength). The encoder always takes every
configured channel; channels a task does not use are zeroed, exactly as an absent channel is in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskalign.data.labels import N_SECTORS, PIRADS_CLASSES, ZONE_LABELS


# Metrics the evaluation writes where lower is better (tables bold the lowest); all others are higher-better
LOWER_IS_BETTER = frozenset({"mse", "mae_ml", "l1"})


@dataclass(frozen=True)
class TaskType:
    kind: str                 # classification | regression | segmentation | restoration
    target: str               # manifest column, cache mask or image channel the target comes from
    n_outputs: int            # classes; 1 for regression, binary masks and images
    metric: str               # the primary metric: model selection on val, the tables' headline
    masks: tuple[str, ...] = ()  # cache masks the task loads (targets and degradation inputs)

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


TASK_TYPES: dict[str, TaskType] = {
    "pirads_cls": TaskType("classification", "pirads", len(PIRADS_CLASSES), "auc"),
    "sector_cls": TaskType("classification", "sector", N_SECTORS, "auc"),
    "volume_reg": TaskType("regression", "volume_ml", 1, "mse"),
    "lesion_seg": TaskType("segmentation", "lesion", 1, "dice", masks=("lesion",)),
    "zone_seg": TaskType("segmentation", "zones", len(ZONE_LABELS), "dice", masks=("zones",)),
    "super_res": TaskType("restoration", "t2w", 1, "ssim"),
    "distortion": TaskType("restoration", "t2w", 1, "ssim", masks=("rectum",)),
    "translation": TaskType("restoration", "dwi", 1, "ssim"),
}


@dataclass(frozen=True)
class Task:
    name: str
    type: TaskType
    cohort: str
    inputs: tuple[str, ...]
    options: dict = field(default_factory=dict)  # factor (super_res), amplitude_mm / decay_mm (distortion)

    @property
    def kind(self) -> str:
        return self.type.kind

    @classmethod
    def from_config(cls, name: str, spec: dict) -> "Task":
        if name not in TASK_TYPES:
            raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_TYPES)}")
        options = {k: v for k, v in spec.items() if k not in ("cohort", "inputs")}
        return cls(name, TASK_TYPES[name], spec["cohort"], tuple(spec["inputs"]), options)


INIT_KINDS = ("random", "scratch", "pretrained", "continual", "specialist")


def check_combination(init: str, protocol: str) -> None:
    """Inits and protocols that make a run: the random-weight FM is frozen by definition, scratch and specialist
    train everything; pretrained and continual encoders take any protocol."""
    kind = init.split(":")[0]
    if kind not in INIT_KINDS or (kind in ("pretrained", "continual")) != (":" in init):
        raise ValueError(f"unknown init {init!r}: random, scratch, specialist, pretrained:<variant>, continual:<variant>")
    if protocol not in ("full", "frozen") and not (protocol.startswith("partial:") and protocol[8:].isdigit()):
        raise ValueError(f"unknown protocol {protocol!r}: full, frozen or partial:<k>")
    fixed = {"random": "frozen", "scratch": "full", "specialist": "full"}
    if kind in fixed and protocol != fixed[kind]:
        raise ValueError(f"init {init} runs with protocol {fixed[kind]} only, not {protocol}")
