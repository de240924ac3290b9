"""Each job's parameters: the slice of the config it depends on, which the rules pass as one JSON argument, so a
change to it reruns exactly the jobs that read it (Snakemake's `params` trigger). Pure functions of the plan."""

from __future__ import annotations

import json
from pathlib import Path

from taskalign.models.family_names import DEFAULT_FAMILY
from taskalign.plan.experiment import Plan

PRETRAIN_KEYS = ("mask_ratio", "weights", "decoder_layers", "epochs", "batch_size", "lr", "warmup_epochs",
                 "weight_decay", "holdout_fraction")
CONTINUAL_KEYS = ("target", "layers", "rank", "alpha", "dropout", "decoder_channels", "epochs", "batch_size", "lr",
                  "warmup_epochs", "weight_decay")


def as_json(value) -> str:
    """Config slices reach the CLIs as one JSON argument, so a change to them changes the command."""
    return json.dumps(value, sort_keys=True)


def sanity(plan: Plan) -> dict:
    """The anatomical sanity checks (taskalign.data.sanity): run wherever masks are read."""
    data = plan.config["data"]
    return {"checks": data["checks"], "check_limits": data["check_limits"]}


def phantom(plan: Plan, cohort: str) -> dict:
    spec = plan.cohorts[cohort]
    train, val, test = spec["splits"]
    return {"phantom": plan.config["data"]["phantom"], "splits": {"train": train, "val": val, "test": test},
            "labelled": spec["labelled"]}


def importer(plan: Plan, cohort: str) -> dict:
    spec = plan.cohorts[cohort]
    return {"kind": spec["source"], "source": spec["path"], "options": spec.get("options", {}),
            "mask_grid": spec["mask_grid"], **sanity(plan)}


def check(plan: Plan, cohort: str) -> dict:
    data = plan.config["data"]
    return {"split_fractions": data["split"]["fractions"], "split_seed": data["split"]["seed"],
            "stratify_by": data["split"]["stratify_by"], "require": data["require"],
            "mask_grid": plan.cohorts[cohort]["mask_grid"], "split_needs": plan.split_needs(cohort), **sanity(plan)}


def preprocess(plan: Plan, cohort: str) -> dict:
    return {**plan.config["preprocess"], **sanity(plan), "fields": plan.cache_fields(cohort)}


def encoder_geometry(plan: Plan) -> dict:
    """The pipeline's own encoder (family vit3d, taskalign.models.families.vit3d): its geometry fields."""
    config = plan.config
    return {"in_channels": len(config["preprocess"]["channels"]), "img_size": config["preprocess"]["size"],
            **{k: config["encoder"][k] for k in ("patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")}}


def cache_contract(plan: Plan) -> dict:
    """The input contract of the pipeline's own encoders: the cache as preprocessing writes it."""
    pre = plan.config["preprocess"]
    return {"channels": pre["channels"], "normalisation": "clip_zscore", "spacing_mm": pre["spacing_mm"],
            "size": pre["size"]}


def pretrain(plan: Plan, variant: str) -> dict:
    return {**{k: plan.pretrain[k] for k in PRETRAIN_KEYS}, "objectives": plan.variants[variant]["objectives"],
            "geometry": encoder_geometry(plan), "channels": plan.config["preprocess"]["channels"],
            "input": cache_contract(plan), "seed": plan.config["seed"]}


def random_encoder(plan: Plan) -> dict:
    return {"family": DEFAULT_FAMILY, "geometry": encoder_geometry(plan), "input": cache_contract(plan),
            "seed": plan.config["seed"]}


def imported_encoder(plan: Plan, variant: str, repository: Path) -> dict:
    """An imported checkpoint (`source: checkpoint`): family, layout, geometry (the config's `encoder` section and
    crop for the pipeline's own family, overridden by the variant's `geometry`), and the input contract the file
    records: the variant's `input` channels, normalisation and spacing, at the cache's crop. A checkpoint trained
    at another crop (`input.size`) is adapted to the cache's crop at import (`checkpoint_size`). A relative `path`
    is taken from the working directory, else from the repository (the test config's example checkpoint)."""
    spec = plan.variants[variant]
    name = spec.get("family", DEFAULT_FAMILY)
    declared = spec.get("input", {})
    contract = {**cache_contract(plan), "spacing_mm": declared.get("spacing_mm"),
                **{k: declared[k] for k in ("channels", "normalisation") if k in declared}}
    base = encoder_geometry(plan) if name == DEFAULT_FAMILY else {}
    geometry = {**base, **({"in_channels": len(contract["channels"])} if base else {}), **spec.get("geometry", {})}
    return {"family": name, "layout": spec.get("layout", "profound"), "geometry": geometry,
            "path": from_workdir_or_repository(spec["path"], repository),
            "input": contract, "checkpoint_size": declared.get("size")}


def continual(plan: Plan) -> dict:
    return {**{k: plan.continual[k] for k in CONTINUAL_KEYS}, "seed": plan.config["seed"]}


def finetune(plan: Plan, task: str, init: str, seed: int) -> dict:
    """Only what the run depends on: a head change does not rerun specialists and vice versa, a change to one
    task's settings reruns that task only."""
    architecture = "specialist" if init == "specialist" else "head"
    return {**plan.finetune_settings(task), "augment": plan.finetune["augment"],
            architecture: plan.finetune[architecture], "task": plan.task_spec(task),
            "channels": plan.config["preprocess"]["channels"], "seed": seed}


def evaluate(plan: Plan, task: str, seed: int) -> dict:
    evaluation = plan.config["evaluate"]
    return {"task": plan.task_spec(task), "channels": plan.config["preprocess"]["channels"], "seed": seed,
            "batch_size": plan.finetune_settings(task)["batch_size"], "bootstrap": evaluation["bootstrap"],
            "save_volumes": evaluation["save_volumes"]}


def features(plan: Plan, task: str) -> dict:
    settings = {"task": plan.task_spec(task), "channels": plan.config["preprocess"]["channels"],
                "layers": plan.analysis["layers"], "batch_size": plan.analysis["batch_size"], "seed": plan.config["seed"]}
    if plan.head_level:  # the task head's features too: its architecture builds an encoder file's model
        settings["head"] = plan.finetune["head"]
    return settings


def shared_studies(plan: Plan) -> str:
    """How far the cross-cohort leakage check reads the images (`data.shared_studies`)."""
    return plan.config["data"]["shared_studies"]


def cka(plan: Plan) -> dict:
    return {**plan.analysis["cka"], "seed": plan.config["seed"]}


def mmd(plan: Plan) -> dict:
    return {**plan.analysis["mmd"], "seed": plan.config["seed"]}


def target_probe(plan: Plan) -> dict:
    return {"target": plan.continual["target"], "layers": plan.continual["layers"],
            "batch_size": plan.analysis["batch_size"], "bootstrap": plan.config["evaluate"]["bootstrap"],
            "seed": plan.config["seed"]}


def rpg(plan: Plan) -> dict:
    """The compared models as [label, init, protocol], the tasks, and the bootstrap of the RPG correlations."""
    return {"models": [[plan.model_label(m), plan.model_init(m), m["protocol"]] for m in plan.models], "tasks": {t: plan.task_spec(t) for t in plan.tasks},
            "bootstrap": plan.analysis["rpg"]["bootstrap"], "seed": plan.config["seed"]}


def radiomics_channels(plan: Plan) -> list[str]:
    return plan.analysis["radiomics"]["channels"]


def from_workdir_or_repository(name: str, repository: Path) -> str:
    """A file the config names: a relative path is taken from the working directory, else from the repository
    (which ships the defaults)."""
    path = Path(name)
    return str(path if path.is_absolute() or path.exists() else repository / path)


def radiomics_file(plan: Plan, repository: Path) -> str:
    """The PyRadiomics settings file (`analysis.radiomics.params`)."""
    return from_workdir_or_repository(plan.analysis["radiomics"]["params"], repository)


def lens(plan: Plan) -> dict:
    return plan.analysis["lens"]


def deterministic(plan: Plan) -> int:
    """1 when the jobs must run deterministically (the shell prefix exports it to every job)."""
    return int(plan.config["deterministic"])
