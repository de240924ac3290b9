"""The downstream task types (SPEC "Tasks"): what each reads from the cache, predicts, trains on and is scored by.

A task's type (`tasks.<name>.type`, a key of `TASK_TYPES`) and its kind decide its head, loss, samples and metrics;
its config entry decides the cohort, the input channels and the type's own knobs (super-resolution factor,
distortion strength). A task's name is only a name: two tasks of one type can run on two cohorts. The encoder
always takes every configured channel; channels a task does not use are zeroed, exactly as an absent channel is in
the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskalign.data.labels import N_SECTORS, PIRADS_CLASSES, ZONE_LABELS
from taskalign.tasks.kinds import (CLASSIFICATION, DDPM_TRANSLATION, ORDINAL_CLASSIFICATION,
                                    REGRESSION, RESTORATION, SEGMENTATION, TRANSLATION, Classification, Kind)
from taskalign.tasks.kinds import LOWER_IS_BETTER  # noqa: F401  (re-exported: its home before the kinds)


@dataclass(frozen=True)
class TaskType:
    """What a configured task of this type is: its kind (taskalign.tasks.kinds: head, loss handling, prediction,
    scoring, metric direction, table group) and what it reads, predicts and takes as options. The models, losses,
    samples and scores read these fields and the kind's, never a task's name."""

    kind: Kind
    target: str               # manifest column, cache mask or image channel the target comes from
    n_outputs: int            # classes; 1 for regression, binary masks and images
    loss: str                 # a key of taskalign.tasks.losses.LOSSES (a task's `loss` option may replace it)
    masks: tuple[str, ...] = ()  # cache masks the task loads (targets and degradation inputs)
    classes: tuple[int, ...] = ()  # classification: the label values, in the order of the model's outputs
    class_weighted: bool = False  # inverse-frequency class weights in the loss (PI-RADS is imbalanced)
    flips: bool = True        # left-right flips allowed in augmentation (the sector scheme has sides)
    degradation: str | None = None  # how the input is made from the target image: thick_slices | rectal_air
    residual_input: str | None = None  # the input channel the model's output is added to (it starts as identity)
    subpixel: bool = False    # restoration output through a sub-pixel upsampling head (super-resolution)
    options: tuple[tuple[str, object], ...] = ()  # the type's own config keys and defaults (None: required)

    def __post_init__(self):
        if isinstance(self.kind, Classification) and len(self.classes) != self.n_outputs:
            raise ValueError(f"a classification type needs one class value per output, got {self.classes}")

    @property
    def metric(self) -> str:
        return self.kind.metric

    @property
    def cache_fields(self) -> tuple[str, ...]:
        """Per-case arrays preprocessing precomputes for this type (the distortion's distance from the rectum)."""
        return ("rectum_distance",) if self.degradation == "rectal_air" else ()

    @property
    def higher_is_better(self) -> bool:
        return self.kind.higher_is_better


SECTOR_CLASSES = tuple(range(N_SECTORS))

TASK_TYPES: dict[str, TaskType] = {
    "pirads_cls": TaskType(ORDINAL_CLASSIFICATION, "pirads", len(PIRADS_CLASSES), "cross_entropy",
                           classes=PIRADS_CLASSES, class_weighted=True),
    "sector_cls": TaskType(CLASSIFICATION, "sector", N_SECTORS, "cross_entropy", classes=SECTOR_CLASSES, flips=False),
    "volume_reg": TaskType(REGRESSION, "volume_ml", 1, "mse"),
    "lesion_seg": TaskType(SEGMENTATION, "lesion", 1, "batch_dice_bce", masks=("lesion",)),
    "zone_seg": TaskType(SEGMENTATION, "zones", len(ZONE_LABELS), "dice_ce", masks=("zones",)),
    "super_res": TaskType(RESTORATION, "t2w", 1, "l1", degradation="thick_slices", residual_input="t2w",
                          subpixel=True, options=(("factor", None),)),
    "distortion": TaskType(RESTORATION, "t2w", 1, "l1", masks=("rectum",), degradation="rectal_air",
                           residual_input="t2w", options=(("amplitude_mm", None), ("decay_mm", None))),
    "translation": TaskType(TRANSLATION, "dwi", 1, "l1_ssim"),
    # 001: T2W -> DWI by a DDPM; `timesteps` of the training schedule, `sample_steps` of the sampling loop
    "translation_ddpm": TaskType(DDPM_TRANSLATION, "dwi", 1, "ssim_per_case",
                                 options=(("timesteps", 1000), ("sample_steps", 50))),
}
# Keys every task takes besides its type's options: `loss` (a LOSSES key), `random_inputs` (channels of which one
# is drawn per sample and the others zeroed: 001's lesion segmentation sees T2W plus ADC or high-b)
COMMON_OPTIONS = ("loss", "random_inputs")
CONFIG_KEYS = ("type", "cohort", "inputs", "finetune")


@dataclass(frozen=True)
class Task:
    name: str
    type: TaskType
    cohort: str
    inputs: tuple[str, ...]
    options: dict = field(default_factory=dict)  # the type's options and COMMON_OPTIONS, as configured

    @property
    def kind(self) -> Kind:
        return self.type.kind

    @property
    def loss(self) -> str:
        return self.options.get("loss", self.type.loss)

    def option(self, key: str):
        """A configured option, else the type's default."""
        return self.options[key] if key in self.options else dict(self.type.options)[key]

    @classmethod
    def from_config(cls, name: str, spec: dict) -> "Task":
        problems = task_problems(name, spec)
        if problems:
            raise ValueError("; ".join(problems))
        options = {k: v for k, v in spec.items() if k not in CONFIG_KEYS}
        return cls(name, TASK_TYPES[spec["type"]], spec["cohort"], tuple(spec["inputs"]), options)


def task_problems(name: str, spec: dict) -> list[str]:
    """What is wrong with the config entry `tasks.<name>`: an unknown type, a missing or foreign option, an
    unknown loss, random inputs the task does not take."""
    from taskalign.tasks.losses import LOSSES  # losses import this module

    kind = spec.get("type")
    if kind not in TASK_TYPES:
        return [f"tasks.{name}.type: unknown task type {kind!r}; known types: {', '.join(TASK_TYPES)}"]
    own = dict(TASK_TYPES[kind].options)
    problems = [f"tasks.{name}: type {kind} needs '{key}'" for key, default in own.items()
                if default is None and key not in spec]
    problems += [f"tasks.{name}.{key}: not an option of type {kind} (its options: "
                 f"{', '.join([*own, *COMMON_OPTIONS])})" for key in spec
                 if key not in CONFIG_KEYS and key not in own and key not in COMMON_OPTIONS]
    steps = {key: spec.get(key, own.get(key)) for key in ("timesteps", "sample_steps")}
    if None not in steps.values() and steps["sample_steps"] > steps["timesteps"]:
        problems.append(f"tasks.{name}.sample_steps: {steps['sample_steps']} sampling steps, more than the "
                        f"schedule's {steps['timesteps']} timesteps")
    if "loss" in spec and spec["loss"] not in LOSSES:
        problems.append(f"tasks.{name}.loss: unknown loss {spec['loss']!r}; known: {', '.join(LOSSES)}")
    drawn = spec.get("random_inputs")
    if drawn is not None and (len(set(drawn)) < 2 or not set(drawn) <= set(spec.get("inputs", []))):
        problems.append(f"tasks.{name}.random_inputs: needs 2+ of the task's inputs, got {spec['random_inputs']}")
    return problems


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
