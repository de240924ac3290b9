# Config validation, path patterns and config look-ups shared by every stage.
import json
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")

# Rules call the library as `python -m taskalign...`; the checkout's src/ is put on the path here (not
# in each command) so that moving the checkout does not change any command text and trigger reruns.
# Without --sdm conda, `python` is the interpreter running Snakemake (the project's .venv), activated or not.
# Snakemake's own default prefix (strict bash) is kept.
def job_environment():
    exports = [f"export PYTHONPATH='{workflow.basedir}/src'"]
    settings = workflow.deployment_settings
    if settings is None or DeploymentMethod.CONDA not in settings.deployment_method:
        exports.append(f"export PATH='{Path(sys.executable).parent}':\"$PATH\"")
    return "; ".join(exports)


# Scheduling: every fine-tuning run from a pretrained or continual encoder waits for pretraining, the longest
# jobs of the DAG, which wait for every cohort's cache. Snakemake otherwise picks among ready jobs without
# regard to what they hold up, so the data stage, pretraining and continual pretraining go first.
CRITICAL_PATH = 10


def config_record() -> Path:
    """Where the whole config goes as JSON, named by its hash: the tables and figures cite it. Its path reaches jobs
    through the shell prefix, which (unlike params) is no rerun trigger; `onstart` writes it, so dry runs write
    nothing."""
    import hashlib

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return (Path("results/provenance") / f"config-{digest}.json").resolve()


onstart:
    record = config_record()
    if not record.exists():
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(config, sort_keys=True, default=str))


shell.prefix(
    f"set -euo pipefail; {job_environment()}; export TASKALIGN_CONFIG='{config_record()}'; "
    f"export TASKALIGN_DETERMINISTIC={int(config['deterministic'])}; "
)

COHORTS = config["data"]["cohorts"]
IMPORTERS = ("picai", "dicom", "nifti", "prostate158", "msd")


def cohorts_from(*sources):
    return [name for name, spec in COHORTS.items() if spec["source"] in sources]


def name_pattern(names):
    """A wildcard constraint matching exactly these names (never matches when there are none)."""
    return "|".join(names) if names else "(?!x)x"


def as_json(value):
    """Config slices reach the CLIs as one JSON argument, so a change to them changes the command."""
    return json.dumps(value, sort_keys=True)


def source_manifest(wildcards):
    spec = COHORTS[wildcards.cohort]
    if spec["source"] == "manifest":
        return spec["path"]
    return f"results/cohorts/{wildcards.cohort}/manifest.csv"


def phantom_params(wildcards):
    train, val, test = COHORTS[wildcards.cohort]["splits"]
    return as_json(
        {
            "phantom": config["data"]["phantom"],
            "splits": {"train": train, "val": val, "test": test},
        }
    )


def import_params(wildcards):
    spec = COHORTS[wildcards.cohort]
    return as_json({"kind": spec["source"], "source": spec["path"], "options": spec.get("options", {})})


def check_params(wildcards):
    return as_json(
        {
            "split_fractions": config["data"]["split"]["fractions"],
            "split_seed": config["data"]["split"]["seed"],
            "stratify_by": config["data"]["split"]["stratify_by"],
            "require": config["data"]["require"],
        }
    )


def all_data_outputs():
    return expand(
        ["results/cache/{cohort}.csv", "results/qc/{cohort}"],
        cohort=list(COHORTS),
    )


# --- encoders -----------------------------------------------------------------------------------------
PRETRAIN = config["pretrain"]
CONTINUAL = config["continual"]
VARIANTS = PRETRAIN["variants"]
TRAINED_VARIANTS = [v for v, spec in VARIANTS.items() if spec["source"] == "train"]
IMPORTED_VARIANTS = [v for v, spec in VARIANTS.items() if spec["source"] == "checkpoint"]


def check_config_references():
    """Names that must refer to something defined elsewhere in the config (the schema cannot say this)."""
    problems = [
        f"pretrain.cohorts: unknown cohort '{c}'" for c in PRETRAIN["cohorts"] if c not in COHORTS
    ]
    if CONTINUAL["cohort"] not in COHORTS:
        problems.append(f"continual.cohort: unknown cohort '{CONTINUAL['cohort']}'")
    problems += [
        f"continual.variants: unknown encoder '{v}' (pretrain.variants or random)"
        for v in CONTINUAL["variants"]
        if v not in VARIANTS and v != "random"
    ]
    for name, spec in VARIANTS.items():
        needed = "objectives" if spec["source"] == "train" else "path"
        if needed not in spec:
            problems.append(f"pretrain.variants.{name}: source {spec['source']} needs '{needed}'")
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))


check_config_references()


def encoder_geometry():
    """EncoderGeometry fields from the config (taskalign.models.encoder)."""
    return {
        "in_channels": len(config["preprocess"]["channels"]),
        "img_size": config["preprocess"]["size"],
        "patch_size": config["encoder"]["patch_size"],
        "hidden_size": config["encoder"]["hidden_size"],
        "mlp_dim": config["encoder"]["mlp_dim"],
        "num_layers": config["encoder"]["num_layers"],
        "num_heads": config["encoder"]["num_heads"],
    }


def pretrain_params(wildcards):
    keys = ["mask_ratio", "weights", "decoder_layers", "epochs", "batch_size", "lr", "warmup_epochs",
            "weight_decay", "holdout_fraction"]
    return as_json(
        {
            **{k: PRETRAIN[k] for k in keys},
            "objectives": VARIANTS[wildcards.variant]["objectives"],
            "geometry": encoder_geometry(),
            "channels": config["preprocess"]["channels"],
            "seed": config["seed"],
        }
    )


def random_encoder_params(wildcards):
    return as_json({"geometry": encoder_geometry(), "seed": config["seed"]})


def import_encoder_params(wildcards):
    spec = VARIANTS[wildcards.variant]
    return as_json({"geometry": encoder_geometry(), "path": spec["path"], "layout": spec.get("layout", "timm")})


def continual_params(wildcards):
    keys = ["target", "layers", "rank", "alpha", "dropout", "decoder_channels", "epochs", "batch_size", "lr",
            "warmup_epochs", "weight_decay"]
    return as_json({**{k: CONTINUAL[k] for k in keys}, "seed": config["seed"]})


def pretrain_inputs(wildcards):
    return expand("results/cache/{cohort}.csv", cohort=PRETRAIN["cohorts"])


def all_encoder_outputs():
    return expand(
        ["results/pretrain/{variant}/encoder.safetensors"], variant=[*VARIANTS, "random"]
    ) + expand(["results/continual/{variant}/encoder.safetensors"], variant=CONTINUAL["variants"])


# --- fine-tuning matrix --------------------------------------------------------------------------------
from taskalign.tasks.spec import check_combination

TASKS = config["tasks"]
FINETUNE = config["finetune"]
EVALUATE = config["evaluate"]


def slug(name):
    """`pretrained:mae` -> `pretrained-mae`, `partial:2` -> `partial-2`: names as path components."""
    return name.replace(":", "-")


def finetune_runs():
    """Every (task, init, protocol, seed) that config `finetune.runs` lists, once, in config order."""
    runs, problems = [], []
    for n, block in enumerate(FINETUNE["runs"]):
        tasks = list(TASKS) if block.get("tasks", "all") == "all" else block["tasks"]
        problems += [f"finetune.runs[{n}].tasks: unknown task '{t}' (not in tasks)" for t in tasks if t not in TASKS]
        for init in block["inits"]:
            kind, _, variant = init.partition(":")
            if kind == "pretrained" and variant not in VARIANTS:
                problems.append(f"finetune.runs[{n}]: init {init}: no pretrain variant '{variant}'")
            if kind == "continual" and variant not in CONTINUAL["variants"]:
                problems.append(f"finetune.runs[{n}]: init {init}: '{variant}' is not in continual.variants")
            for protocol in block.get("protocols", ["full"]):
                try:
                    check_combination(init, protocol)
                except ValueError as err:
                    problems.append(f"finetune.runs[{n}]: {err}")
                    continue
                for task in tasks:
                    for seed in block.get("seeds", [0]):
                        if (task, init, protocol, seed) not in runs:
                            runs.append((task, init, protocol, seed))
    for name, spec in TASKS.items():
        if spec["cohort"] not in COHORTS:
            problems.append(f"tasks.{name}.cohort: unknown cohort '{spec['cohort']}'")
        required = {"super_res": ["factor"], "distortion": ["amplitude_mm", "decay_mm"]}.get(name, [])
        problems += [f"tasks.{name}: needs '{key}'" for key in required if key not in spec]
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))
    return runs


RUNS = finetune_runs()
INITS = {slug(init): init for _, init, _, _ in RUNS}
PROTOCOLS = {slug(protocol): protocol for _, _, protocol, _ in RUNS}
RUN_PATTERN = "{task}/{init}/{protocol}/seed{seed}"


def run_paths(prefix, names):
    """Output paths of every configured run under `prefix` (results/finetune or results/evaluate)."""
    return [
        f"{prefix}/{task}/{slug(init)}/{slug(protocol)}/seed{seed}/{name}"
        for task, init, protocol, seed in RUNS
        for name in names
    ]


def finetune_encoder(wildcards):
    """The encoder file an init starts from (none for the specialist)."""
    kind, _, variant = INITS[wildcards.init].partition(":")
    if kind in ("random", "scratch"):
        return "results/pretrain/random/encoder.safetensors"
    if kind == "pretrained":
        return f"results/pretrain/{variant}/encoder.safetensors"
    if kind == "continual":
        return f"results/continual/{variant}/encoder.safetensors"
    return []


def task_index(wildcards):
    return f"results/cache/{TASKS[wildcards.task]['cohort']}.csv"


def task_spec(task):
    """The task's config entry without its fine-tuning overrides (those are merged into the settings)."""
    return {k: v for k, v in TASKS[task].items() if k != "finetune"}


def task_finetune_settings(task):
    """`finetune` with the task's own overrides; batch_size ends up as this task's integer."""
    from taskalign.tasks.spec import TASK_TYPES

    keys = ["epochs", "lr", "warmup_epochs", "weight_decay"]
    settings = {k: FINETUNE[k] for k in keys}
    settings["batch_size"] = FINETUNE["batch_size"][TASK_TYPES[task].kind]
    settings.update(TASKS[task].get("finetune", {}))
    return settings


def finetune_params(wildcards):
    """Only what the run depends on: a head change does not rerun specialists and vice versa, a change to one
    task's settings reruns that task only."""
    architecture = "specialist" if INITS[wildcards.init] == "specialist" else "head"
    return as_json(
        {
            **task_finetune_settings(wildcards.task),
            "augment": FINETUNE["augment"],
            architecture: FINETUNE[architecture],
            "task": task_spec(wildcards.task),
            "channels": config["preprocess"]["channels"],
            "seed": int(wildcards.seed),
        }
    )


def evaluate_params(wildcards):
    return as_json(
        {
            "task": task_spec(wildcards.task),
            "channels": config["preprocess"]["channels"],
            "seed": int(wildcards.seed),
            "batch_size": task_finetune_settings(wildcards.task)["batch_size"],
            "bootstrap": EVALUATE["bootstrap"],
            "save_volumes": EVALUATE["save_volumes"],
        }
    )


def all_finetune_outputs():
    return ["results/evaluate/metrics.csv"] if RUNS else []


# --- features and analyses -----------------------------------------------------------------------------
ANALYSIS = config["analysis"]
ANALYSED = ANALYSIS["variant"]  # the pretraining variant whose encoders the analyses compare
if ANALYSED not in VARIANTS:
    raise ValueError(f"invalid config:\n  analysis.variant: '{ANALYSED}' is not in pretrain.variants")


def base_encoders():
    """Encoders that exist before fine-tuning, by name: the random-weight FM, each pretrained and continual one."""
    encoders = {"random": "results/pretrain/random/encoder.safetensors"}
    encoders.update({f"pretrained-{v}": f"results/pretrain/{v}/encoder.safetensors" for v in VARIANTS})
    encoders.update({f"continual-{v}": f"results/continual/{v}/encoder.safetensors" for v in CONTINUAL["variants"]})
    return encoders


BASE_ENCODERS = base_encoders()
# A frozen run's encoder is its starting encoder and a specialist has none: neither gets features of its own.
FEATURE_RUNS = [run for run in RUNS if run[1] != "specialist" and run[2] != "frozen"]


def base_features(task, encoder):
    return f"results/features/{task}/{encoder}.npz"


def run_features(task, init, protocol, seed):
    return f"results/features/{task}/{slug(init)}/{slug(protocol)}/seed{seed}.npz"


def features_params(wildcards):
    return as_json(
        {
            "task": task_spec(wildcards.task),
            "channels": config["preprocess"]["channels"],
            "layers": ANALYSIS["layers"],
            "batch_size": ANALYSIS["batch_size"],
            "seed": config["seed"],
        }
    )


def all_feature_outputs():
    return [base_features(t, e) for t in TASKS for e in BASE_ENCODERS] + [run_features(*r) for r in FEATURE_RUNS]


def cka_pairs(task):
    """000 Table 6's encoder pairs on this task's images: pretrained-continual, and each of them against the
    encoders fine-tuned from it (every unfrozen protocol and seed)."""
    pre, cont = f"pretrained-{ANALYSED}", f"continual-{ANALYSED}"
    pairs = []
    if ANALYSED in CONTINUAL["variants"]:
        pairs.append({"pair": "pretrained-continual", "protocol": "", "seed": "",
                      "a": base_features(task, pre), "b": base_features(task, cont)})
    for t, init, protocol, seed in sorted(FEATURE_RUNS):
        start = slug(init)
        if t == task and start in (pre, cont):
            pairs.append({"pair": f"{start.split('-')[0]}-finetuned", "protocol": protocol, "seed": seed,
                          "a": base_features(task, start), "b": run_features(t, init, protocol, seed)})
    return pairs


CKA_TASKS = [task for task in TASKS if cka_pairs(task)]


def mmd_seeds(task):
    """Seeds with both the fine-tuned (pretrained, full) and the scratch run of the task: D2S needs both."""
    runs = {(init, seed) for t, init, protocol, seed in RUNS if t == task and protocol == "full"}
    return sorted(s for init, s in runs if init == f"pretrained:{ANALYSED}" and ("scratch", s) in runs)


MMD_TASKS = [task for task in TASKS if mmd_seeds(task)]


def mmd_inputs(wildcards):
    task, seeds = wildcards.task, mmd_seeds(wildcards.task)
    return {
        "random": base_features(task, "random"),
        "pretrained": base_features(task, f"pretrained-{ANALYSED}"),
        "finetuned": [run_features(task, f"pretrained:{ANALYSED}", "full", s) for s in seeds],
        "scratch": [run_features(task, "scratch", "full", s) for s in seeds],
    }


def lens_run(task):
    """The fine-tuned run the lens compares with its pretrained encoder: the first seed of the full protocol."""
    seeds = sorted(s for t, i, p, s in RUNS if t == task and i == f"pretrained:{ANALYSED}" and p == "full")
    return (task, f"pretrained:{ANALYSED}", "full", seeds[0]) if seeds else None


LENS_TASKS = [task for task in TASKS if lens_run(task)]


def radiomics_params_file():
    """A relative path is taken from the working directory, else from the repository (which ships the default)."""
    path = Path(ANALYSIS["radiomics"]["params"])
    return str(path if path.is_absolute() or path.exists() else Path(workflow.basedir) / path)


RADIOMICS_COHORTS = sorted({TASKS[task]["cohort"] for task in LENS_TASKS})


def target_probe_encoders():
    """Each continual variant's encoder before and after continual pretraining, by name."""
    encoders = {}
    for v in CONTINUAL["variants"]:
        encoders[f"pretrained-{v}"] = f"results/pretrain/{v}/encoder.safetensors"
        encoders[f"continual-{v}"] = f"results/continual/{v}/encoder.safetensors"
    return encoders


def all_analysis_outputs():
    outputs = []
    if CONTINUAL["variants"]:
        outputs += ["results/analysis/target_probe.csv", "results/analysis/target_probe.png"]
    if CKA_TASKS:
        outputs.append("results/analysis/cka.csv")
    if MMD_TASKS:
        outputs += ["results/analysis/mmd.csv", "results/analysis/rpg.csv", "results/analysis/rpg_correlations.csv"]
    if LENS_TASKS:
        outputs += ["results/analysis/lens.csv", "results/analysis/lens_summary.csv"]
    return outputs


# --- paper tables, figures and report ------------------------------------------------------------------
from taskalign.report.names import PAPERS, PERFORMANCE_TABLES
from taskalign.tasks.spec import TASK_TYPES

REPORT = config["report"]
RUN_KINDS = {TASK_TYPES[task].kind for task, *_ in RUNS}
PRETRAINED_FULL = {init for _, init, protocol, _ in RUNS if init.startswith("pretrained:") and protocol == "full"}


def paper_tables():
    names = ["000_table1_cohorts"]
    names += [name for name, kind in PERFORMANCE_TABLES.items() if kind in RUN_KINDS]
    names += ["000_table6_cka"] if CKA_TASKS else []
    names += ["001_table1_compute"] if MMD_TASKS else []
    names += ["002_table5_ablation"] if PRETRAINED_FULL else []
    names += ["003_lens_summary"] if LENS_TASKS else []
    return names


def paper_figures():
    names = []
    if MMD_TASKS:
        names += ["001_fig1b_scratch_vs_finetuned", "001_fig2_rpg_vs_distance", "001_fig3_learning_curves"]
    names += ["000_fig_cka_heatmaps"] if CKA_TASKS else []
    names += ["003_lens_heatmap", "003_lens_class_bars"] if LENS_TASKS else []
    seg_runs = [r for r in RUNS if TASK_TYPES[r[0]].kind == "segmentation" and r[1] == f"pretrained:{ANALYSED}"
                and r[2] == "full"]
    names += ["000_fig_segmentation_overlays"] if seg_runs else []
    return names


TABLE_FILES = ["{name}.csv", "{name}.md", "{name}.tex", "{name}.provenance.json", "{name}.html"]


def table_outputs(names):
    return [f"results/tables/{f}".format(name=n) for n in names for f in TABLE_FILES]


def figure_outputs(names):
    return [f"results/figures/{n}.{ext}" for n in names for ext in ("png", "pdf")]


def runs_of(tasks=None, inits=None, protocol=None):
    return [r for r in RUNS if (tasks is None or r[0] in tasks) and (inits is None or r[1] in inits)
            and (protocol is None or r[2] == protocol)]


def run_file(stage, run, name):
    task, init, protocol, seed = run
    return f"results/{stage}/{task}/{slug(init)}/{slug(protocol)}/seed{seed}/{name}"


def table_inputs(wildcards):
    name = f"{wildcards.paper}_{wildcards.what}"
    if name in PERFORMANCE_TABLES:
        tasks = [t for t in TASKS if TASK_TYPES[t].kind == PERFORMANCE_TABLES[name]]
        return ["results/evaluate/metrics.csv"] + [run_file("evaluate", r, "cases.csv") for r in runs_of(tasks)]
    if name == "000_table1_cohorts":
        return expand("results/manifests/{cohort}.csv", cohort=list(COHORTS))
    if name == "001_table1_compute":
        inits = ["scratch", f"pretrained:{ANALYSED}"]
        return [run_file("finetune", r, "timing.json") for r in runs_of(MMD_TASKS, inits, "full")]
    return {"000_table6_cka": "results/analysis/cka.csv", "002_table5_ablation": "results/evaluate/metrics.csv",
            "003_lens_summary": "results/analysis/lens_summary.csv"}[name]


def figure_inputs(wildcards):
    name = f"{wildcards.paper}_{wildcards.what}"
    if name == "001_fig3_learning_curves":
        runs = runs_of(MMD_TASKS, ["scratch", f"pretrained:{ANALYSED}"], "full")
        return [run_file("finetune", r, "history.csv") for r in runs]
    if name == "000_fig_segmentation_overlays":
        seg = [t for t in TASKS if TASK_TYPES[t].kind == "segmentation"]
        runs = runs_of(seg, [f"pretrained:{ANALYSED}"], "full")
        return [run_file("evaluate", r, "predictions.npz") for r in runs] + [
            f"results/cache/{TASKS[t]['cohort']}.csv" for t in seg]
    return {
        "001_fig1b_scratch_vs_finetuned": ["results/evaluate/summary.csv", "results/analysis/mmd.csv"],
        "001_fig2_rpg_vs_distance": ["results/analysis/rpg.csv", "results/analysis/rpg_correlations.csv"],
        "000_fig_cka_heatmaps": ["results/analysis/cka.csv"],
        "003_lens_heatmap": ["results/analysis/lens.csv"],
        "003_lens_class_bars": ["results/analysis/lens.csv"],
    }[name]


def report_settings(figure=False):
    """What the builders read from the config; the figure style only reaches figures, so a style change reruns
    figures alone."""
    settings = {
        "tasks": {t: task_spec(t) for t in TASKS},
        "runs": [list(r) for r in sorted(RUNS)],  # sorted: the order of tasks in the config is no setting
        "variant": ANALYSED,
        "objective_sets": {v: spec["objectives"] for v, spec in VARIANTS.items() if spec["source"] == "train"},
        "other_cohorts": [c for c in COHORTS if c not in {spec["cohort"] for spec in TASKS.values()}],
    }
    if figure:
        settings.update(style=REPORT["style"], overlay_cases=REPORT["overlay_cases"])
    return as_json(settings)


def paper_outputs(paper=None):
    tables = [n for n in paper_tables() if paper is None or n.startswith(paper)]
    figures = [n for n in paper_figures() if paper is None or n.startswith(paper)]
    return table_outputs(tables) + figure_outputs(figures)
