"""The eight downstream tasks (SPEC "Tasks"): what each reads from the cache, predicts, trains on and is scored by.

A task's type (`TASK_TYPES`) decides its head, loss, samples and metrics; its config entry (`tasks.<name>`) decides
the cohort, the input channels and the task's own knobs (super-resolution factor, distortion strength). The encoder
always takes every configured channel; channels a task does not use are zeroed, exactly as an absent channel is in
the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskalign.data.labels import N_SECTORS, PIRADS_CLASSES, ZONE_LABELS


# Metrics the evaluation writes where lower is better (tables bold the lowest); all others are higher-better
LOWER_IS_BETTER = frozenset({"mse", "mae_ml", "l1"})


@dataclass(frozen=True)
class TaskType:
    """Everything that differs between tasks: the models, losses, samples and scores read these fields and never
    a task's name."""

    kind: str                 # classification | regression | segmentation | restoration
    target: str               # manifest column, cache mask or image channel the target comes from
    n_outputs: int            # classes; 1 for regression, binary masks and images
    metric: str               # the primary metric: model selection on val, the tables' headline
    loss: str                 # a key of taskalign.tasks.losses.LOSSES
    masks: tuple[str, ...] = ()  # cache masks the task loads (targets and degradation inputs)
    classes: tuple[int, ...] = ()  # classification: the label values, in the order of the model's outputs
    class_weighted: bool = False  # inverse-frequency class weights in the loss (PI-RADS is imbalanced)
    ordinal: bool = False     # graded classes, also scored as ">= 3" and ">= 4" (evaluate.metrics.pirads_metrics)
    flips: bool = True        # left-right flips allowed in augmentation (the sector scheme has sides)
    degradation: str | None = None  # how the input is made from the target image: thick_slices | rectal_air
    residual_input: str | None = None  # the input channel the model's output is added to (it starts as identity)
    subpixel: bool = False    # restoration output through a sub-pixel upsampling head (super-resolution)

    def __post_init__(self):
        if self.kind == "classification" and len(self.classes) != self.n_outputs:
            raise ValueError(f"a classification type needs one class value per output, got {self.classes}")

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


SECTOR_CLASSES = tuple(range(N_SECTORS))

TASK_TYPES: dict[str, TaskType] = {
    "pirads_cls": TaskType("classification", "pirads", len(PIRADS_CLASSES), "auc", "cross_entropy",
                           classes=PIRADS_CLASSES, class_weighted=True, ordinal=True),
    "sector_cls": TaskType("classification", "sector", N_SECTORS, "auc", "cross_entropy", classes=SECTOR_CLASSES,
                           flips=False),
    "volume_reg": TaskType("regression", "volume_ml", 1, "mse", "mse"),
    "lesion_seg": TaskType("segmentation", "lesion", 1, "dice", "batch_dice_bce", masks=("lesion",)),
    "zone_seg": TaskType("segmentation", "zones", len(ZONE_LABELS), "dice", "dice_ce", masks=("zones",)),
    "super_res": TaskType("restoration", "t2w", 1, "ssim", "l1", degradation="thick_slices", residual_input="t2w",
                          subpixel=True),
    "distortion": TaskType("restoration", "t2w", 1, "ssim", "l1", masks=("rectum",), degradation="rectal_air",
                           residual_input="t2w"),
    "translation": TaskType("restoration", "dwi", 1, "ssim", "l1_ssim"),
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
