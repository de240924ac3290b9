"""Disk budget at paper scale: the paper config's results/ projected by folder, final and peak, today's storage
policy against the new one (issue 25), from bytes measured per job kind times the plan's job counts.

Measured here, with the library's own model code at the config's geometry: every model is built on the meta
device (shapes only, no 254M-parameter initialisation), and each file a job writes is written for real into a
scratch folder (tmpfs when there is one) and its size taken: the encoder file, a pretraining variant's model, the
continual adapter, a fine-tune's model per task (whole model today; head plus the encoder's name and digest for a
frozen run, new), a cache case (image in float32 and float16, masks), a features file per task, a task's
predictions. Optimiser state is AdamW's two fp32 moments of the trainable parameters.

Policies. Today: every training job keeps `last.pt` (weights + optimiser) and `best_model.pt` in results/resume
after it ends, every fine-tune's model file holds the whole encoder, the cache is float32. New: resume state exists
only while a job runs (peak = final + the resume state of the RUNNING_AT_ONCE largest training jobs), a frozen run's
model file holds its trained parameters only, the cache dtype is the config's (`preprocess.cache_dtype`).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, row

FOLDERS = ("cache", "pretrain", "continual", "finetune", "evaluate", "features", "analysis", "resume")
POLICIES = ("today", "new")
RUNNING_AT_ONCE = 2  # training jobs holding resume state at the same time (issue 25's goal)
FINAL_GOAL_BYTES = 300e9
ANALYSIS_FILE_BYTES = 1_000_000  # allowance per analysis CSV/PNG (tables of a few hundred rows): not measured
RESUME_CADENCE_MIN = 10  # the new policy writes resume state on a time cadence (and on SIGTERM/SIGUSR1)
GB = 1e9


@dataclass(frozen=True)
class ModelBytes:
    """What one training job kind stores. Bytes: `file`, the safetensors it writes today (the whole model);
    `trained_file`, the same with only the trained parameters and the encoder's name and digest (runs that
    leave encoder parameters untrained; the new policy does this for frozen runs); `weights`, one fp32 copy of
    the model's state dict; `trainable`, its trainable parameters."""

    file: int
    trained_file: int
    weights: int
    trainable: int

    @property
    def resume_state(self) -> int:
        """`last.pt` (weights + AdamW's two moments of the trainable parameters) + `best_model.pt` (weights)."""
        return 2 * self.weights + 2 * self.trainable

    @property
    def last_checkpoint(self) -> int:
        return self.weights + 2 * self.trainable


@dataclass(frozen=True)
class Measured:
    """Bytes per job kind at one config's geometry (see `measure`)."""

    cache_image: dict[str, int]  # image.npy per case, by dtype
    cache_mask: int  # one mask .npy per case
    cache_field: int  # rectum_distance.npy (float32) per case of a distortion task's cohort (new policy)
    encoder_file: int  # an encoder .safetensors (pretrained, last, random, continual merged)
    pretrain: dict[str, ModelBytes]  # by trained variant; `file` is the encoder file
    continual: ModelBytes  # `file` is adapter.safetensors (LoRA + adapter + decoder)
    finetune: dict[tuple[str, str, str], ModelBytes]  # by (task, "encoder" | "specialist", protocol)
    predictions: dict[str, int]  # predictions.npz per evaluated run, by task
    features: dict[str, int]  # one features .npz per task


# --------------------------------------------------------------------------------------------------- measuring


def scratch_dir() -> str | None:
    """tmpfs when there is one: files of ~1 GB are written and deleted, and need not touch the disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def file_bytes(write) -> int:
    """Size of what `write(path)` writes (numpy adds its suffix to `path`), in a scratch folder removed afterwards."""
    with tempfile.TemporaryDirectory(dir=scratch_dir()) as tmp:
        write(Path(tmp) / "file")
        return sum(f.stat().st_size for f in Path(tmp).iterdir())


def safetensors_bytes(state: dict, metadata: dict[str, str]) -> int:
    """Bytes of `save_file(state, ...)` for a state dict of meta tensors (the values do not change the size)."""
    import torch
    from safetensors.torch import save_file

    real = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in state.items()}
    return file_bytes(lambda path: save_file(real, str(path), metadata=metadata))


def state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def trainable_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def model_bytes(model, metadata: dict[str, str], trained: dict | None = None) -> ModelBytes:
    state = model.state_dict()
    trained = state if trained is None else trained
    return ModelBytes(file=safetensors_bytes(state, metadata),
                      trained_file=safetensors_bytes(trained, metadata) if trained is not state else 0,
                      weights=state_bytes(state), trainable=trainable_bytes(model))


def geometry_of(config: dict):
    from taskalign.models.families.vit3d import ViT3dGeometry as EncoderGeometry

    encoder = config["encoder"]
    return EncoderGeometry(in_channels=len(config["preprocess"]["channels"]),
                           img_size=tuple(config["preprocess"]["size"]),
                           **{k: tuple(v) if isinstance(v, list) else v for k, v in encoder.items()
                              if k in ("patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")})


def new_encoder(geometry):
    import torch

    from taskalign.models.families.vit3d import ViT3dEncoder as Encoder

    with torch.device("meta"):
        return Encoder(geometry)


def measure_finetune(plan, geometry) -> dict[tuple[str, str, str], ModelBytes]:
    """Each task's model with the encoder and with the specialist, for every protocol its runs use. The model file
    is written as `run_finetune` writes it; the frozen run's new file keeps the parameters outside the encoder."""
    import torch

    from taskalign.tasks.spec import Task
    from taskalign.models.task_model import apply_protocol, build_model

    config = plan.config
    params = {"channels": config["preprocess"]["channels"], "head": plan.finetune["head"],
              "specialist": plan.finetune["specialist"]}
    encoder_ref = {"encoder": json.dumps("results/pretrain/mae/encoder.safetensors"), "encoder_sha256": "0" * 64}
    out = {}
    for task_name in plan.tasks:
        task = Task.from_config(task_name, plan.task_spec(task_name))
        for architecture in ("encoder", "specialist"):
            protocols = sorted({r.protocol for r in plan.runs if r.task == task_name
                                and (r.init == "specialist") == (architecture == "specialist")})
            if not protocols:
                continue
            with torch.device("meta"):
                model = build_model(task, "specialist" if architecture == "specialist" else "scratch",
                                    new_encoder(geometry) if architecture == "encoder" else None, params)
            metadata = {"task": json.dumps(task_name), "architecture": json.dumps(params["head"]),
                        "geometry": json.dumps(str(geometry))}
            for protocol in protocols:
                for p in model.parameters():
                    p.requires_grad = True
                trainable = set(apply_protocol(model, protocol))
                trained = None
                if protocol != "full" and architecture == "encoder":
                    trained = {k: v for k, v in model.state_dict().items()
                               if not k.startswith("encoder.") or k in trainable}
                out[task_name, architecture, protocol] = model_bytes(model, {**metadata, **encoder_ref}, trained)
    return out


def measure_pretrain(plan, geometry) -> dict[str, ModelBytes]:
    """A trained variant's PretrainingModel (all of it trained); the file it keeps is the encoder file."""
    import torch

    from taskalign.models.pretraining import PretrainingModel

    out, by_objectives = {}, {}
    for variant in plan.trained_variants:
        objectives = tuple(plan.variants[variant]["objectives"])
        if objectives not in by_objectives:
            with torch.device("meta"):
                model = PretrainingModel(new_encoder(geometry), objectives=list(objectives),
                                         channels=plan.config["preprocess"]["channels"],
                                         mask_ratio=plan.pretrain["mask_ratio"], weights=plan.pretrain["weights"],
                                         decoder_layers=plan.pretrain["decoder_layers"])
            state = model.state_dict()
            by_objectives[objectives] = ModelBytes(file=0, trained_file=0, weights=state_bytes(state),
                                                   trainable=trainable_bytes(model))
        out[variant] = by_objectives[objectives]
    return out


def measure_continual(plan, geometry) -> ModelBytes:
    """LoRA encoder + adapter + UperNet as `run_continual` trains it; `file` is its adapter.safetensors."""
    import torch

    from taskalign.train.continual import segmentation_model

    with torch.device("meta"):
        model = segmentation_model(new_encoder(geometry), plan.continual)
    state = model.state_dict()
    adapter = {k: v for k, v in state.items() if "lora_" in k or not k.startswith("encoder.")}
    return ModelBytes(file=safetensors_bytes(adapter, {"variant": "mae"}), trained_file=0,
                      weights=state_bytes(state), trainable=trainable_bytes(model))


def synthetic_label(shape: tuple[int, ...], labels: int) -> np.ndarray:
    """An ellipsoid gland in the middle of the grid, cut into `labels` slabs: what a segmentation predicts."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum((g / 0.3) ** 2 for g in grids) <= 1
    slab = np.minimum(((grids[-1] + 0.3) / 0.6 * labels).astype(int), labels - 1) + 1
    return np.where(inside, slab, 0).astype(np.uint8)


def measure_predictions(plan) -> dict[str, int]:
    """predictions.npz of one evaluated run (np.savez_compressed as `run_evaluation` writes it): label volumes of
    every test case (a synthetic gland); restoration volumes of `save_volumes` cases in float16, random values
    (incompressible: an upper bound); class probabilities or values otherwise."""
    from taskalign.tasks.spec import TASK_TYPES

    shape = tuple(plan.config["preprocess"]["size"])
    rng = np.random.default_rng(0)
    out = {}
    for task in plan.tasks:
        kind, n_out = TASK_TYPES[task].kind, TASK_TYPES[task].n_outputs
        n_test = plan.split_sizes(plan.task_cohort(task))["test"]
        if kind == "segmentation":
            case, n = synthetic_label(shape, n_out), n_test
        elif kind == "restoration":
            case = rng.standard_normal(shape).astype(np.float16)
            n = min(n_test, plan.config["evaluate"]["save_volumes"])
        else:
            case, n = np.zeros(n_out, np.float32), n_test
        volumes = {f"case{i:05d}": case for i in range(n)} if kind != "restoration" else {"case00000": case}
        size = file_bytes(lambda path: np.savez_compressed(path, **volumes))
        out[task] = size * (n if kind == "restoration" else 1)
    return out


def measure_features(plan) -> dict[str, int]:
    """One features file per task: every case of its cohort x (analysis.layers + final) x hidden, float32."""
    import pandas as pd

    from taskalign.analysis.feature_files import layer_names, write_features

    hidden = plan.config["encoder"]["hidden_size"]
    out = {}
    for task in plan.tasks:
        n = sum(plan.split_sizes(plan.task_cohort(task)).values())
        cases = pd.DataFrame({"case_id": [f"{task}-{i:05d}" for i in range(n)],
                              "patient_id": [f"p{i:05d}" for i in range(n)], "split": ["train"] * n})
        layers = plan.analysis["layers"]  # the pipeline's own encoder (vit3d) is what this sizes
        layers = layers.get("vit3d", []) if isinstance(layers, dict) else layers
        features = {name: np.zeros((n, hidden), np.float32) for name in layer_names(layers)}
        out[task] = file_bytes(lambda path: write_features(path, cases, features))
    return out


def measure(plan) -> Measured:
    """Bytes per job kind at `plan`'s config geometry."""
    config = plan.config
    geometry = geometry_of(config)
    size = tuple(config["preprocess"]["size"])
    image = {dtype: file_bytes(lambda path, d=dtype: np.save(path, np.zeros((geometry.in_channels, *size), d)))
             for dtype in ("float32", "float16")}
    mask = file_bytes(lambda path: np.save(path, np.zeros(size, np.uint8)))
    field = file_bytes(lambda path: np.save(path, np.zeros(size, np.float32)))
    encoder_state = new_encoder(geometry).state_dict()
    encoder_file = safetensors_bytes(encoder_state, {"geometry": json.dumps(str(geometry)), "variant": '"mae"'})
    return Measured(cache_image=image, cache_mask=mask, cache_field=field, encoder_file=encoder_file,
                    pretrain=measure_pretrain(plan, geometry), continual=measure_continual(plan, geometry),
                    finetune=measure_finetune(plan, geometry), predictions=measure_predictions(plan),
                    features=measure_features(plan))


# -------------------------------------------------------------------------------------------------- projecting


def run_kind(run) -> tuple[str, str, str]:
    return run.task, "specialist" if run.init == "specialist" else "encoder", run.protocol


def training_jobs(plan, measured: Measured) -> dict[str, ModelBytes]:
    """Every training job of the plan (pretraining, continual, fine-tuning) with what it stores."""
    jobs = {f"pretrain {v}": measured.pretrain[v] for v in plan.trained_variants}
    jobs.update({f"continual {v}": measured.continual for v in plan.continual["variants"]})
    jobs.update({f"finetune {r.task} {r.init} {r.protocol} seed{r.seed}": measured.finetune[run_kind(r)]
                 for r in plan.runs})
    return jobs


def cases_of(plan) -> tuple[int, int]:
    """(cases, labelled cases) over every cohort; the phantom writes all four masks of a labelled case."""
    sizes = {c: sum(plan.split_sizes(c).values()) for c in plan.cohorts}
    return sum(sizes.values()), sum(n for c, n in sizes.items() if plan.cohorts[c].get("labelled", True))


def project(plan, measured: Measured) -> dict:
    """{policy: {"folders": {folder: bytes}, "final", "peak", "largest_resume": (job, bytes)}}: pure arithmetic on
    the measured bytes and the plan's job counts."""
    from taskalign.data.labels import MASK_COLUMNS

    cases, labelled = cases_of(plan)
    masks = labelled * len(MASK_COLUMNS) * measured.cache_mask
    # the distortion's distance field, precomputed only in the cohorts a distortion task reads
    fields = measured.cache_field * sum(sum(plan.split_sizes(c).values()) for c in plan.cohorts
                                        if plan.cache_fields(c) and plan.cohorts[c].get("labelled", True))
    jobs = training_jobs(plan, measured)
    largest = max(jobs.items(), key=lambda item: item[1].resume_state)
    encoders = 2 * len(plan.trained_variants) + 1 + len(plan.imported_variants)  # best + last each; random
    shared = {
        "pretrain": encoders * measured.encoder_file,
        "continual": len(plan.continual["variants"]) * (measured.encoder_file + measured.continual.file),
        "evaluate": sum(measured.predictions[r.task] for r in plan.runs),
        "features": sum(measured.features[path.split("/")[2]] for path in plan.feature_outputs()),
        "analysis": ANALYSIS_FILE_BYTES * len(plan.analysis_outputs()),
    }
    cache_dtype = plan.config["preprocess"].get("cache_dtype", "float32")
    out = {}
    for policy in POLICIES:
        trained_only = policy == "new"  # frozen and partial:k runs store what they trained, naming their encoder
        folders = {
            "cache": (cases * measured.cache_image["float32" if policy == "today" else cache_dtype] + masks
                      + (fields if policy == "new" else 0)),
            "finetune": sum(m.trained_file if (trained_only and m.trained_file) else m.file
                            for r in plan.runs for m in [measured.finetune[run_kind(r)]]),
            "resume": sum(m.resume_state for m in jobs.values()) if policy == "today" else 0,
            **shared,
        }
        folders = {name: folders[name] for name in FOLDERS}
        final = sum(folders.values())
        # today every finished job's resume state is already in `final`; new: only the running jobs hold one
        peak = final if policy == "today" else final + RUNNING_AT_ONCE * largest[1].resume_state
        out[policy] = {"folders": folders, "final": final, "peak": peak,
                       "largest_resume": (largest[0], largest[1].resume_state)}
    return out


# ----------------------------------------------------------------------------------------------------- report


def gb(n: float) -> str:
    return f"{n / GB:,.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:,.1f} MB"


def folder_notes(plan, measured: Measured) -> dict[str, str]:
    cases, labelled = cases_of(plan)
    return {
        "cache": f"{cases} cases: image {gb(measured.cache_image['float32'])} float32 / "
                 f"{gb(measured.cache_image['float16'])} float16, 4 masks x {gb(measured.cache_mask)} per labelled "
                 f"case ({labelled})",
        "pretrain": f"encoder file {gb(measured.encoder_file)} x (best + last of {len(plan.trained_variants)} "
                    f"trained variants, + random)",
        "continual": f"{len(plan.continual['variants'])} variants: merged encoder + adapter "
                     f"{gb(measured.continual.file)}",
        "finetune": f"{len(plan.runs)} runs ({sum(r.protocol == 'frozen' for r in plan.runs)} frozen: head only, new)",
        "evaluate": f"predictions.npz of {len(plan.runs)} runs (segmentation masks compressed; restoration "
                    f"{plan.config['evaluate']['save_volumes']} float16 volumes, upper bound)",
        "features": f"{len(plan.feature_outputs())} files, {gb(max(measured.features.values()))} the largest",
        "analysis": f"{len(plan.analysis_outputs())} tables/figures, {gb(ANALYSIS_FILE_BYTES)} allowance each",
        "resume": f"{len(training_jobs(plan, measured))} training jobs' last.pt + best_model.pt kept (today); "
                  "none after a job ends (new)",
    }


def epoch_rows(plan, measured: Measured) -> list[dict]:
    """Checkpoint bytes a fine-tune writes per epoch: today last.pt every epoch and best_model.pt on every new
    best (at most every epoch); new none per epoch, one resume state per cadence and on a signal."""
    rows = []
    kinds = {run_kind(r): r for r in plan.runs}
    largest = max(kinds, key=lambda k: measured.finetune[k].resume_state)
    frozen = [k for k in kinds if k[2] == "frozen"]
    for kind in [largest] + ([max(frozen, key=lambda k: measured.finetune[k].resume_state)] if frozen else []):
        m = measured.finetune[kind]
        rows.append(row("scale", f"bytes written per epoch, fine-tune {kind[0]} {kinds[kind].init}/{kind[2]}: "
                        f"today last.pt {gb(m.last_checkpoint)} every epoch + best_model.pt {gb(m.weights)} on each "
                        f"new best; new: none per epoch, a resume state of {gb(m.resume_state)} every "
                        f"{RESUME_CADENCE_MIN} min and on SIGTERM/SIGUSR1", f"today <= {gb(m.resume_state)}/epoch",
                        "new 0/epoch", None))
    return rows


def report(plan, measured: Measured, projection: dict) -> list[dict]:
    today, new = projection["today"], projection["new"]
    notes = folder_notes(plan, measured)
    rows = [row("scale", f"results/{name}: {notes[name]}", f"today {gb(today['folders'][name])}",
                f"new {gb(new['folders'][name])}",
                new["folders"][name] / today["folders"][name] if today["folders"][name] else None, ratio_fmt="{:.0%}")
            for name in FOLDERS]
    rows.append(row("scale", f"final disk, results/ ({', '.join(FOLDERS)}): new / today (today "
                    f"{'meets' if today['final'] <= FINAL_GOAL_BYTES else 'misses'} the goal)",
                    f"today {gb(today['final'])}", f"new {gb(new['final'])}", new["final"] / today["final"],
                    f"<= {gb(FINAL_GOAL_BYTES)}", new["final"] <= FINAL_GOAL_BYTES, ratio_fmt="{:.0%}"))
    job, resume = new["largest_resume"]
    bound = new["final"] + RUNNING_AT_ONCE * resume
    rows.append(row("scale", f"peak disk: final + the resume state of {RUNNING_AT_ONCE} running jobs, the largest "
                    f"({job}: {gb(resume)} each; met by the policy's construction once the training code removes "
                    "it when a job's outputs are written); today every job's is kept, so peak = final",
                    f"today {gb(today['peak'])}", f"new {gb(new['peak'])}", new["peak"] / today["peak"],
                    f"<= {gb(bound)}", new["peak"] <= bound, ratio_fmt="{:.0%}"))
    return rows + lead_rows(plan, measured, projection) + epoch_rows(plan, measured)


def lead_rows(plan, measured: Measured, projection: dict) -> list[dict]:
    """What else would bring the final disk down, from the same measurements (not implemented)."""
    from taskalign.data.labels import MASK_COLUMNS

    _, labelled = cases_of(plan)
    one_mask_file = labelled * (len(MASK_COLUMNS) - 1) * measured.cache_mask
    final = projection["new"]["final"]
    return [row("scale", f"lead (not built): the {len(MASK_COLUMNS)} masks of a case as one uint8 array (3 binary "
                f"masks as bits beside the zone labels) saves {gb(one_mask_file)}", f"new {gb(final)}",
                gb(final - one_mask_file), (final - one_mask_file) / final, f"<= {gb(FINAL_GOAL_BYTES)}",
                final - one_mask_file <= FINAL_GOAL_BYTES, ratio_fmt="{:.0%}")]


def paper_plan(config_path: Path = REPO / "config" / "paper.yaml"):
    """The Plan of a config file with the schema's defaults filled in, as the Snakefile makes it."""
    import yaml
    from snakemake.utils import validate

    from taskalign.plan import Plan

    config = copy.deepcopy(yaml.safe_load(config_path.read_text()))
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return Plan(config)


def run(quick: bool = False) -> list[dict]:
    plan = paper_plan()
    measured = measure(plan)
    return report(plan, measured, project(plan, measured))
