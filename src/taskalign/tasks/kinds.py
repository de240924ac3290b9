"""Task kinds (issue 30): what differs between a classification, a segmentation, a restoration... task, declared
once. A task type (taskalign.tasks.spec.TASK_TYPES) names its kind; every stage asks the kind, never compares it.

A kind declares its FM head and its specialist (keys that taskalign.models.heads maps to classes: tasks sits below
models), its loss, where its target comes from, how a model output becomes a prediction, its scorer (a key of
taskalign.evaluate.scoring.SCORERS, which sits above), its primary metric and the metrics where lower is better,
and its table group (000 Tables 2-5 and the `finetune.batch_size` key). The DDPM translation kind also declares how
it trains and infers: a denoising step and a sampling loop with MONAI's scheduler and inferer. Torch is imported
where a kind runs a model, not here: the plan (and Snakemake building the DAG) reads kinds without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Kind:
    name: str
    group: str               # performance table and finetune.batch_size key
    head: str                # models.heads.HEADS key
    specialist: str          # models.heads.SPECIALISTS key
    scorer: str              # evaluate.scoring.SCORERS key
    metric: str              # the primary metric: model selection on val, the tables' headline
    target_from: str         # "row" (a manifest value), "mask" (a cache mask) or "image" (an image channel)
    output: str              # 000 Table 1's outputs column, "{}" the target's name
    lower_is_better: frozenset = frozenset()  # metrics of this kind where lower is better
    relative_metric: str | None = None  # 001's RPG metric where it differs from the primary one
    saves: str | None = None  # test predictions kept: "masks" (all), "images" (the first few), None
    starts_at_prior: bool = False  # output bias at the training masks' class prior (models.task_model)
    normalised: bool = False  # targets standardised with the training split's mean and std
    operating_point: bool = False  # a specificity at a sensitivity whose threshold the validation split sets

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in self.lower_is_better

    @property
    def rpg_metric(self) -> str:
        """The metric 001's RPG, Fig. 1b and Fig. 2 score (PI-RADS: specificity at sensitivity 0.9)."""
        return self.relative_metric or self.metric

    def describe_output(self, target: str) -> str:
        """000 Table 1's outputs cell: `T2W image`, `lesion mask`, `pirads class`."""
        return self.output.format(target.upper() if self.target_from == "image" else target)

    @property
    def pictured(self) -> bool:
        """Predictions are volumes: montages and saved arrays, not a table of values."""
        return self.target_from != "row"

    @property
    def labels(self) -> bool:
        """Predictions are label volumes (drawn with a label colour map)."""
        return self.target_from == "mask"

    def kept_prediction(self, prediction: np.ndarray, n_kept: int, limit: int) -> np.ndarray | None:
        """The test prediction evaluation stores with `n_kept` stored so far: every mask, the first `limit` images
        (as float16), nothing for values."""
        if self.saves == "masks":
            return prediction
        if self.saves == "images" and n_kept < limit:
            return prediction.astype(np.float16)
        return None

    def model_outputs(self, n_outputs: int) -> int:
        return n_outputs

    def item_target(self, task, value):
        """The target of one item from its manifest value (row kinds); None where the batch makes it."""
        return None

    def prediction(self, task, output) -> np.ndarray:
        """Model output of one case -> prediction: an image (D, H, W) unless the kind says otherwise."""
        return output.float()[0].numpy()

    def infer(self, task, model, image):
        """The model's output for a batch of inputs."""
        return model(image)

    def train_loss(self, task, model, batch: dict, loss):
        return loss(model(batch["image"]), batch["target"])

    def feature_pass(self, task, model, image):
        """One forward pass whose head features are read (analysis.features, the `head` level)."""
        return model(image)

    def trivial_prediction(self, task, image) -> np.ndarray:
        """What a model that learned nothing predicts for one case from its input (C, D, H, W), the baseline every
        init must beat (evaluation's `trivial` columns): here, an image kind, the input returned unchanged (its
        first channel: the degraded T2W, or the T2W for a translation)."""
        return image[0].float().cpu().numpy()


@dataclass(frozen=True)
class Classification(Kind):
    def trivial_prediction(self, task, image):
        """The same probabilities for every case: no ranking (AUC 0.5) and no threshold that spares a negative."""
        n = task.type.n_outputs
        return np.full(n, 1.0 / n)

    def item_target(self, task, value):
        import torch

        return torch.tensor(task.type.classes.index(int(value)))

    def prediction(self, task, output):
        return output.float().softmax(dim=0).numpy()


@dataclass(frozen=True)
class Regression(Kind):
    def item_target(self, task, value):
        import torch

        return torch.tensor([float(value)], dtype=torch.float32)

    def prediction(self, task, output):
        return output.float().numpy()

    def trivial_prediction(self, task, image):
        """The training split's mean (0 in the standardised units the model predicts)."""
        return np.zeros(1, dtype=np.float32)


@dataclass(frozen=True)
class Segmentation(Kind):
    def model_outputs(self, n_outputs: int) -> int:
        """Multi-class segmentation adds a background channel (softmax); binary masks use one sigmoid channel."""
        return n_outputs + 1 if n_outputs > 1 else n_outputs

    def prediction(self, task, output):
        output = output.float()
        if task.type.n_outputs > 1:
            return output.argmax(dim=0).numpy().astype(np.uint8)
        return (output[0] > 0).numpy().astype(np.uint8)

    def trivial_prediction(self, task, image):
        """An empty mask (background everywhere)."""
        return np.zeros(tuple(image.shape[1:]), dtype=np.uint8)


@dataclass(frozen=True)
class DiffusionTranslation(Kind):
    """001's T2W -> DWI translation as a DDPM (Ho et al. 2020) whose noise predictor is the task model: its input is
    the encoder input with the noisy target in the target's channel (MONAI's concat conditioning on the task's
    other inputs), its timestep enters through the model (models.diffusion). Training: MONAI's DiffusionInferer on
    a random timestep, L1 on the noise plus 001's SSIM regulariser on the denoised estimate; inference: the
    scheduler's sampling loop over `sample_steps` of the `timesteps` it trained on, from seeded noise."""

    def scheduler(self, task):
        from monai.networks.schedulers import DDPMScheduler

        # cache intensities are standardised, not in [-1, 1]: no clipping of the denoised estimate
        return DDPMScheduler(num_train_timesteps=task.option("timesteps"), clip_sample=False)

    def train_loss(self, task, model, batch: dict, loss):
        import torch
        import torch.nn.functional as F
        from monai.inferers import DiffusionInferer

        target = batch["target"]
        scheduler = self.scheduler(task)
        noise = torch.randn_like(target)
        steps = torch.randint(0, scheduler.num_train_timesteps, (target.shape[0],), device=target.device)
        predicted = DiffusionInferer(scheduler)(target, model, noise, steps, condition=batch["image"], mode="concat")
        alpha = scheduler.alphas_cumprod.to(target.device)[steps].view(-1, 1, 1, 1, 1)
        noisy = scheduler.add_noise(target, noise, steps)
        denoised = (noisy - (1 - alpha).sqrt() * predicted.float()) / alpha.sqrt()
        # the SSIM term weighted by alpha: at large t the estimate divides by sqrt(alpha) ~ 0 and carries no image
        return F.l1_loss(predicted.float(), noise) + (alpha.flatten() * loss(denoised, target)).mean()

    def feature_pass(self, task, model, image):
        """The noise predictor at t = 0 on the condition alone (a zero noisy target)."""
        import torch

        return model(torch.cat([torch.zeros_like(image[:, :1]), image], dim=1), torch.zeros(len(image)))

    def infer(self, task, model, image):
        import torch
        from monai.inferers import DiffusionInferer

        scheduler = self.scheduler(task)
        # timesteps stay on the CPU, as MONAI's sampling loop appends a CPU 0 to them and indexes its tables with them
        scheduler.set_timesteps(task.option("sample_steps"))
        with torch.random.fork_rng(devices=[image.device] if image.device.type == "cuda" else []):
            torch.manual_seed(0)  # every encoder is scored from the same noise
            noise = torch.randn((image.shape[0], 1, *image.shape[2:]), device=image.device)
            return DiffusionInferer(scheduler).sample(noise, model, scheduler, conditioning=image, mode="concat",
                                                      verbose=False)


_IMAGE = dict(group="restoration", head="intensity_upernet", specialist="residual_unet", scorer="images", metric="ssim",
              target_from="image", output="{} image", lower_is_better=frozenset({"l1"}), saves="images")

CLASSIFICATION = Classification("classification", "classification", "mlp", "resnet", "classes", "auc", "row",
                                "{} class")
ORDINAL_CLASSIFICATION = Classification("ordinal_classification", "classification", "mlp", "resnet", "ordinal",
                                        "auc", "row", "{} class", relative_metric="spec_at_sens90",
                                        operating_point=True)
REGRESSION = Regression("regression", "regression", "mlp", "resnet", "values", "mse", "row", "{}",
                        lower_is_better=frozenset({"mse", "mae_ml"}), normalised=True)
SEGMENTATION = Segmentation("segmentation", "segmentation", "upernet", "unet", "masks", "dice", "mask",
                            "{} mask", saves="masks", starts_at_prior=True)
RESTORATION = Kind("restoration", **_IMAGE)
TRANSLATION = Kind("translation", **_IMAGE)
DDPM_TRANSLATION = DiffusionTranslation("ddpm_translation", **{**_IMAGE, "head": "noise_predictor",
                                                                "specialist": "diffusion_unet"})

KINDS = {k.name: k for k in (CLASSIFICATION, ORDINAL_CLASSIFICATION, REGRESSION, SEGMENTATION, RESTORATION,
                             TRANSLATION, DDPM_TRANSLATION)}
# Metrics the evaluation writes where lower is better (tables bold the lowest); all others are higher-better
LOWER_IS_BETTER = frozenset().union(*(k.lower_is_better for k in KINDS.values()))
TABLE_GROUPS = tuple(dict.fromkeys(k.group for k in KINDS.values()))
