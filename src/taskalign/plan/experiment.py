"""The experiment plan: every job of the DAG and where it writes, made once from the validated config.

`Plan(config)` knows the cohorts and their roles, the encoders (pretrained variants, the random-weight encoder,
imported checkpoints, continual ones), the fine-tuning matrix (task x init x protocol x seed), the feature runs,
the CKA pairs, the MMD sets, the lens runs and the paper outputs with their inputs. The Snakefile, the report and
the tests ask it; a config whose parts do not fit together raises PlanError with every problem at once.
"""

from __future__ import annotations

from functools import cached_property

from taskalign.analysis.cka_pairs import CONTINUAL_FT, FROM_CONTINUAL, PRETRAINED_CONTINUAL, PRETRAINED_FT
from taskalign.data.labels import SPLITS
from taskalign.data.splits import manifest_split_sizes
from taskalign.models.family_names import DEFAULT_FAMILY, FAMILY_LAYOUTS
from taskalign.plan import layout
from taskalign.plan.layout import Run
from taskalign.tasks.spec import Task, check_combination, task_problems

IMPORTERS = ("picai", "dicom", "nifti", "prostate158", "msd")


ABLATION_BASELINE = ("scratch", "full")  # 002 Table 5: Swin-B without pretraining, the row the first change is from

class PlanError(ValueError):
    """A config whose parts do not fit together; `problems` lists each as `key: what is wrong`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


class Plan:
    def __init__(self, config: dict):
        self.config = config
        self.cohorts = config["data"]["cohorts"]
        self.pretrain = config["pretrain"]
        self.continual = config["continual"]
        self.tasks = config["tasks"]
        self.finetune = config["finetune"]
        self.analysis = config["analysis"]
        # The compared foundation models: a pretrain variant and the protocol of its fine-tuned runs
        self.models = [{"variant": m["variant"], "protocol": m.get("protocol", "full")} for m in self.analysis["models"]]
        self.analysed = self.models[0]["variant"]  # CKA (000 Table 6) and the lens (003) analyse this one
        self.ablation_steps = self._ablation_steps()
        # Configured variants plus the ablation's own (`ablation<k>`): every variant the pretrain rule makes
        self.variants = {**self.pretrain["variants"],
                         **{v: {"source": "train", "objectives": objs} for _, v, objs in self.ablation_steps
                            if v not in self.pretrain["variants"]}}
        problems = self._reference_problems() + self._cohort_problems()  # every problem in one round
        self.runs = self._finetune_runs(problems)
        self._add_runs(self._ablation_runs(problems))
        if problems:
            raise PlanError(problems)

    # --- config cross-checks ------------------------------------------------------------------------------------

    def _reference_problems(self) -> list[str]:
        """Names that must refer to something defined elsewhere in the config (the schema cannot say this)."""
        problems = [f"pretrain.cohorts: unknown cohort '{c}'" for c in self.pretrain["cohorts"] if c not in self.cohorts]
        if self.continual["cohort"] not in self.cohorts:
            problems.append(f"continual.cohort: unknown cohort '{self.continual['cohort']}'")
        problems += [f"continual.variants: unknown encoder '{v}' (pretrain.variants or random)"
                     for v in self.continual["variants"] if v not in self.variants and v != "random"]
        for name, spec in self.variants.items():
            needed = "objectives" if spec["source"] == "train" else "path"
            if needed not in spec:
                problems.append(f"pretrain.variants.{name}: source {spec['source']} needs '{needed}'")
            problems += self._checkpoint_problems(name, spec)
        for name, spec in self.tasks.items():
            if spec["cohort"] not in self.cohorts:
                problems.append(f"tasks.{name}.cohort: unknown cohort '{spec['cohort']}'")
            problems += task_problems(name, spec)  # the type exists and takes these options
        for n, model in enumerate(self.models):
            if model["variant"] not in self.variants:
                problems.append(f"analysis.models[{n}].variant: '{model['variant']}' is not in pretrain.variants")
            try:
                check_combination(f"pretrained:{model['variant']}", model["protocol"])
            except ValueError as err:
                problems.append(f"analysis.models[{n}]: {err}")
        return problems

    def _checkpoint_problems(self, name: str, spec: dict) -> list[str]:
        """An imported checkpoint's family and layout must be registered ones (the torch-free table), and its input
        channels ones the cache has."""
        where = f"pretrain.variants.{name}"
        if spec["source"] != "checkpoint":
            extra = [k for k in ("family", "layout", "geometry", "input") if k in spec]
            return [f"{where}: {', '.join(extra)} only apply to source checkpoint"] if extra else []
        family = spec.get("family", DEFAULT_FAMILY)
        if family not in FAMILY_LAYOUTS:
            return [f"{where}.family: unknown encoder family '{family}'; known: {', '.join(FAMILY_LAYOUTS)}"]
        problems = []
        layout = spec.get("layout", "profound")
        if layout not in FAMILY_LAYOUTS[family]:
            problems.append(f"{where}.layout: family {family} has no layout '{layout}'; its layouts: "
                            f"{', '.join(FAMILY_LAYOUTS[family])}")
        cached = self.config["preprocess"]["channels"]
        missing = [c for c in spec.get("input", {}).get("channels", []) if c not in cached]
        if missing:
            problems.append(f"{where}.input.channels: {missing} not in preprocess.channels {cached}")
        if family != DEFAULT_FAMILY and "geometry" not in spec:
            problems.append(f"{where}: family {family} needs 'geometry' (the config's encoder section is vit3d's)")
        return problems

    def split_sizes(self, cohort: str) -> dict[str, int] | None:
        """Cases per split where they are known before any job runs: the config's (phantom cohorts) or the user's
        manifest's (its split column, else the split the check will make); None where an importer decides."""
        spec = self.cohorts[cohort]
        if spec["source"] == "phantom":
            return dict(zip(SPLITS, spec["splits"]))
        if spec["source"] == "manifest":
            return manifest_split_sizes(spec["path"], self.config["data"]["split"])
        return None

    def users(self, cohort: str) -> list[str]:
        """What trains or scores on the cohort: tasks.<name> and continual."""
        users = [f"tasks.{t}" for t, spec in self.tasks.items() if spec["cohort"] == cohort]
        return users + (["continual"] if self.continual["cohort"] == cohort else [])

    def split_needs(self, cohort: str) -> dict[str, str]:
        """Split -> the problem if it has no cases, for each split something uses ("tasks.zone_seg: cohort 'x' has
        no val cases (to pick the best epoch)"). Checked here where the split sizes are known before any job runs,
        else by the manifest check (rule check_manifest), which every training job waits for."""
        needs = {}
        for split, why in (("train", "to train on"), ("val", "to pick the best epoch"), ("test", "to score")):
            needing = [u for u in self.users(cohort) if split != "test" or u != "continual"]  # continual: no test
            if needing:  # sorted: the check's params must not change when the config lists tasks in another order
                needs[split] = f"{', '.join(sorted(needing))}: cohort '{cohort}' has no {split} cases ({why})"
        return needs

    def _cohort_problems(self) -> list[str]:
        """Cohorts that cannot serve what uses them, found before any job runs (issue: a cohort without val
        cases used to fail when fine-tuning started, after pretraining had run)."""
        problems = []
        fractions = self.config["data"]["split"]["fractions"]
        total = sum(fractions.values())
        if abs(total - 1) > 1e-6:
            problems.append(f"data.split.fractions: train + val + test = {total:g}, must be 1")
        complete = []
        for name, spec in self.cohorts.items():
            if spec["source"] == "phantom" and "splits" not in spec:
                problems.append(f"data.cohorts.{name}: source phantom needs 'splits' [train, val, test]")
            elif spec["source"] != "phantom" and "path" not in spec:
                problems.append(f"data.cohorts.{name}: source {spec['source']} needs 'path'")
            else:
                complete.append(name)
        sizes = {}
        for cohort in complete:
            used_by = self.users(cohort)
            if used_by and not self.cohorts[cohort].get("labelled", True):
                problems.append(f"{', '.join(used_by)}: cohort '{cohort}' has no labels (labelled: false)")
            try:
                sizes[cohort] = self.split_sizes(cohort)
            except ValueError as err:  # an unreadable manifest or fractions that do not sum to 1
                problems.append(f"data.cohorts.{cohort}: {err}")
                continue
            for split, problem in self.split_needs(cohort).items():
                known = sizes[cohort]
                if (known[split] if known is not None else fractions[split]) == 0:
                    problems.append(problem)
        pretrain_sizes = [sizes.get(c) for c in self.pretrain["cohorts"] if c in self.cohorts]
        if self.pretrain["holdout_fraction"] > 0 and pretrain_sizes and all(s is not None for s in pretrain_sizes):
            n_train = sum(s["train"] for s in pretrain_sizes)
            if n_train < 2:
                problems.append(f"pretrain.cohorts: {n_train} train case(s) in {', '.join(self.pretrain['cohorts'])}; "
                                "pretraining holds out holdout_fraction of them and needs at least 2")
        return problems

    def _ablation_steps(self) -> list[tuple[str, str, list[str]]]:
        """002 Table 5's rows: (label, variant, objectives) with cumulative objective sets, a configured trained
        variant reused where its set is the same."""
        ablation = self.pretrain.get("ablation")
        if not ablation:
            return []
        trained = {frozenset(spec["objectives"]): name for name, spec in self.pretrain["variants"].items()
                   if spec["source"] == "train"}
        steps = []
        for k, objective in enumerate(ablation["objectives"], start=1):
            objectives = ablation["objectives"][:k]
            label = objective if k == 1 else f"+{objective}"
            steps.append((label, trained.get(frozenset(objectives), f"ablation{k}"), objectives))
        return steps

    def _ablation_runs(self, problems: list[str]) -> list[Run]:
        if not self.ablation_steps:
            return []
        ablation = self.pretrain["ablation"]
        tasks = list(self.tasks) if ablation.get("tasks", "all") == "all" else ablation["tasks"]
        problems += [f"pretrain.ablation.tasks: unknown task '{t}'" for t in tasks if t not in self.tasks]
        try:
            check_combination("pretrained:x", ablation["protocol"])
        except ValueError as err:
            problems.append(f"pretrain.ablation: {err}")
            return []
        # 002 Table 5's first row is measured from the unpretrained backbone: scratch, fine-tuned in full
        baseline = [Run(task, ABLATION_BASELINE[0], ABLATION_BASELINE[1], seed)
                    for task in tasks if task in self.tasks for seed in ablation.get("seeds", [0])]
        return baseline + [Run(task, f"pretrained:{variant}", ablation["protocol"], seed)
                           for _, variant, _ in self.ablation_steps
                           for task in tasks if task in self.tasks for seed in ablation.get("seeds", [0])]

    def _add_runs(self, runs: list[Run]) -> None:
        self.runs += [run for run in runs if run not in self.runs]

    def _finetune_runs(self, problems: list[str]) -> list[Run]:
        """Every (task, init, protocol, seed) that `finetune.runs` lists, once, in config order."""
        runs: list[Run] = []
        for n, block in enumerate(self.finetune["runs"]):
            tasks = list(self.tasks) if block.get("tasks", "all") == "all" else block["tasks"]
            problems += [f"finetune.runs[{n}].tasks: unknown task '{t}' (not in tasks)" for t in tasks
                         if t not in self.tasks]
            for init in block["inits"]:
                kind, _, variant = init.partition(":")
                if kind == "pretrained" and variant not in self.variants:
                    problems.append(f"finetune.runs[{n}]: init {init}: no pretrain variant '{variant}'")
                if kind == "continual" and variant not in self.continual["variants"]:
                    problems.append(f"finetune.runs[{n}]: init {init}: '{variant}' is not in continual.variants")
                for protocol in block.get("protocols", ["full"]):
                    try:
                        check_combination(init, protocol)
                    except ValueError as err:
                        problems.append(f"finetune.runs[{n}]: {err}")
                        continue
                    for task in tasks:
                        for seed in block.get("seeds", [0]):
                            run = Run(task, init, protocol, seed)
                            if run not in runs:
                                runs.append(run)
        return runs

    # --- cohorts ------------------------------------------------------------------------------------------------

    def cohorts_from(self, *sources: str) -> list[str]:
        return [name for name, spec in self.cohorts.items() if spec["source"] in sources]

    @cached_property
    def imported_cohorts(self) -> list[str]:
        return self.cohorts_from(*IMPORTERS)

    def source_manifest(self, cohort: str) -> str:
        """The manifest the integrity check reads: the user's file on the manifest route, else the generated one."""
        spec = self.cohorts[cohort]
        return spec["path"] if spec["source"] == "manifest" else layout.cohort_manifest(cohort)

    def cache_fields(self, cohort: str) -> list[str]:
        """Per-case arrays preprocessing precomputes for the tasks on this cohort (the distortion's distance field)."""
        fields = [f for t, spec in self.tasks.items() if spec["cohort"] == cohort for f in self.task(t).type.cache_fields]
        return list(dict.fromkeys(fields))

    def task(self, name: str) -> Task:
        """The configured task `name` (its type and kind, cohort, inputs and options)."""
        return Task.from_config(name, self.task_spec(name))

    def task_cohort(self, task: str) -> str:
        return self.tasks[task]["cohort"]

    def task_index(self, task: str) -> str:
        return layout.cache_index(self.task_cohort(task))

    # --- encoders -----------------------------------------------------------------------------------------------

    @cached_property
    def trained_variants(self) -> list[str]:
        return [v for v, spec in self.variants.items() if spec["source"] == "train"]

    @cached_property
    def imported_variants(self) -> list[str]:
        return [v for v, spec in self.variants.items() if spec["source"] == "checkpoint"]

    @cached_property
    def base_encoders(self) -> dict[str, str]:
        """Encoders that exist before fine-tuning, by name: the random-weight FM, each configured pretrained variant
        (the ablation's own variants are only fine-tuned) and each continual one."""
        encoders = {"random": layout.pretrained_encoder("random")}
        encoders.update({f"pretrained-{v}": layout.pretrained_encoder(v) for v in self.pretrain["variants"]})
        encoders.update({f"continual-{v}": layout.continual_encoder(v) for v in self.continual["variants"]})
        return encoders

    def init_encoder(self, init: str) -> str | None:
        """The encoder file an init starts from (none for the specialist)."""
        kind, _, variant = init.partition(":")
        if kind in ("random", "scratch"):
            return layout.pretrained_encoder("random")
        if kind == "pretrained":
            return layout.pretrained_encoder(variant)
        if kind == "continual":
            return layout.continual_encoder(variant)
        return None

    def target_probe_encoders(self) -> dict[str, str]:
        """Each continual variant's encoder before and after continual pretraining, by name."""
        encoders = {}
        for v in self.continual["variants"]:
            encoders[f"pretrained-{v}"] = layout.pretrained_encoder(v)
            encoders[f"continual-{v}"] = layout.continual_encoder(v)
        return encoders

    # --- fine-tuning --------------------------------------------------------------------------------------------

    @cached_property
    def inits(self) -> dict[str, str]:
        """{path component: init} of every configured run."""
        return {layout.slug(r.init): r.init for r in self.runs}

    @cached_property
    def protocols(self) -> dict[str, str]:
        return {layout.slug(r.protocol): r.protocol for r in self.runs}

    def runs_of(self, tasks=None, inits=None, protocol=None) -> list[Run]:
        return [r for r in self.runs if (tasks is None or r.task in tasks) and (inits is None or r.init in inits)
                and (protocol is None or r.protocol == protocol)]

    def task_spec(self, task: str) -> dict:
        """The task's config entry without its fine-tuning overrides (those are merged into the settings)."""
        return {k: v for k, v in self.tasks[task].items() if k != "finetune"}

    def finetune_settings(self, task: str) -> dict:
        """`finetune` with the task's own overrides; batch_size ends up as this task's integer."""
        settings = {k: self.finetune[k] for k in ("epochs", "lr", "warmup_epochs", "weight_decay")}
        settings["batch_size"] = self.finetune["batch_size"][self.task(task).kind.group]
        settings.update(self.tasks[task].get("finetune", {}))
        return settings

    # --- features and analyses ----------------------------------------------------------------------------------

    @property
    def head_level(self) -> bool:
        """The distances read the task head's features (`analysis.mmd.layer: head`), which a frozen run moves too."""
        return self.analysis["mmd"]["layer"] == "head"

    @cached_property
    def feature_runs(self) -> list[Run]:
        """Runs with features of their own: a frozen run's encoder is its starting encoder (at the head level, the
        compared models' frozen runs have their own head), a specialist has none."""
        compared = {(self.model_init(m), m["protocol"]) for m in self.models} if self.head_level else set()
        return [r for r in self.runs if r.init != "specialist"
                and (r.protocol != "frozen" or (r.init, r.protocol) in compared)]

    def cka_pairs(self, task: str) -> list[dict]:
        """000 Table 6's encoder pairs on this task's images: pretrained-continual, and for every fine-tuned run
        from the pretrained encoder (FT, each unfrozen protocol and seed) pretrained-finetuned and
        continual-finetuned with that SAME FT file (the paper's key comparison, section 2.5); the runs fine-tuned
        from the continual encoder are compared with it under their own label. None without a continual encoder."""
        if self.analysed not in self.continual["variants"]:
            return []
        pre, cont = f"pretrained-{self.analysed}", f"continual-{self.analysed}"

        def pair(name: str, run, a: str, b: str | layout.Run) -> dict:
            """A pair of encoders by name (`pretrained-mae`, a run's `pretrained-mae/full/seed0`) and file."""
            b_name, b_file = ((layout.run_features_name(b), layout.run_features(b)) if isinstance(b, layout.Run)
                              else (b, layout.base_features(task, b)))
            return {"pair": name, "protocol": run.protocol if run else "", "seed": run.seed if run else "",
                    "a": layout.base_features(task, a), "b": b_file, "encoder_a": a, "encoder_b": b_name}

        pairs = [pair(PRETRAINED_CONTINUAL, None, pre, cont)]
        for run in sorted(r for r in self.feature_runs if r.task == task and r.protocol != "frozen"):
            if run.init == f"pretrained:{self.analysed}":
                pairs += [pair(PRETRAINED_FT, run, pre, run), pair(CONTINUAL_FT, run, cont, run)]
            elif run.init == f"continual:{self.analysed}":
                pairs.append(pair(FROM_CONTINUAL, run, cont, run))
        return pairs

    @cached_property
    def cka_tasks(self) -> list[str]:
        """Tasks with a fine-tuned run from the pretrained encoder: Table 6 needs its FT."""
        return [task for task in self.tasks if any(p["pair"] == PRETRAINED_FT for p in self.cka_pairs(task))]

    @staticmethod
    def model_init(model: dict) -> str:
        return f"pretrained:{model['variant']}"

    @staticmethod
    def model_label(model: dict) -> str:
        """`pretrained:mae/frozen`: a compared model in the analysis tables (init/protocol)."""
        return f"pretrained:{model['variant']}/{model['protocol']}"

    def mmd_seeds(self, task: str, model: dict) -> list[int]:
        """Seeds with both the model's fine-tuned run and the scratch run of the task: D2S and RPG need both."""
        fine = {r.seed for r in self.runs_of([task], [self.model_init(model)], model["protocol"])}
        return sorted(fine & {r.seed for r in self.runs_of([task], ["scratch"], "full")})

    def model_tasks(self, model: dict) -> list[str]:
        return [task for task in self.tasks if self.mmd_seeds(task, model)]

    @cached_property
    def mmd_tasks(self) -> list[str]:
        return [task for task in self.tasks if any(self.mmd_seeds(task, m) for m in self.models)]

    def model_features(self, task: str, model: dict, seed: int) -> str:
        """The fine-tuned model's features; a frozen encoder cannot move, so a frozen run has its start's (at the
        head level its own: the head moved)."""
        if model["protocol"] == "frozen" and not self.head_level:
            return layout.base_features(task, f"pretrained-{model['variant']}")
        return layout.run_features(Run(task, self.model_init(model), model["protocol"], seed))

    def mmd_inputs(self) -> dict:
        """{model label: {task: random, pretrained, finetuned [per seed], scratch [per seed], seeds}} (rule mmd)."""
        inputs = {}
        for model in self.models:
            for task in self.model_tasks(model):
                seeds = self.mmd_seeds(task, model)
                inputs.setdefault(self.model_label(model), {})[task] = {
                    "random": layout.base_features(task, "random"),
                    "pretrained": layout.base_features(task, f"pretrained-{model['variant']}"),
                    "finetuned": [self.model_features(task, model, s) for s in seeds],
                    "scratch": [layout.run_features(Run(task, "scratch", "full", s)) for s in seeds],
                    "seeds": seeds, "own_references": self.shares_reference_encoder(model["variant"])}
        return inputs

    def shares_reference_encoder(self, variant: str) -> bool:
        """Whether a variant's encoder is the architecture of the random-weight and scratch references (the
        pipeline's own family at the config's geometry): only then are D2R and D2S distances in one space."""
        spec = self.variants[variant]
        return spec.get("family", DEFAULT_FAMILY) == DEFAULT_FAMILY and not spec.get("geometry")

    def mmd_input_files(self) -> list[str]:
        """Every feature file the one mmd job reads."""
        return sorted({path for tasks in self.mmd_inputs().values() for files in tasks.values()
                       for key in ("random", "pretrained", "finetuned", "scratch")
                       for path in ([files[key]] if isinstance(files[key], str) else files[key])})

    def lens_inputs(self, task: str) -> dict:
        """The lens job's files: the cohort's radiomics, the pretrained encoder's and every FT seed's features."""
        return {"radiomics": layout.radiomics_table(self.task_cohort(task)),
                "pretrained": layout.base_features(task, f"pretrained-{self.analysed}"),
                "finetuned": [layout.run_features(run) for run in self.lens_runs(task)]}

    def lens_runs(self, task: str) -> list[Run]:
        """The fine-tuned runs the lens compares with their pretrained encoder: every seed of the analysed variant's
        full-protocol runs (rank stability across seeds)."""
        return sorted(self.runs_of([task], [f"pretrained:{self.analysed}"], "full"))

    @cached_property
    def lens_tasks(self) -> list[str]:
        return [task for task in self.tasks if self.lens_runs(task)]

    @cached_property
    def radiomics_cohorts(self) -> list[str]:
        return sorted({self.task_cohort(task) for task in self.lens_tasks})

    # --- what `rule all` and the stage targets ask for ----------------------------------------------------------

    def data_outputs(self) -> list[str]:
        return [path for c in self.cohorts for path in (layout.cache_index(c), layout.qc_dir(c))]

    def encoder_outputs(self) -> list[str]:
        return ([layout.pretrained_encoder(v) for v in [*self.variants, "random"]]
                + [layout.continual_encoder(v) for v in self.continual["variants"]])

    def finetune_outputs(self) -> list[str]:
        return [layout.collected_metrics()] if self.runs else []

    def feature_outputs(self) -> list[str]:
        return ([layout.base_features(t, e) for t in self.tasks for e in self.base_encoders]
                + [layout.run_features(r) for r in self.feature_runs])

    def analysis_outputs(self) -> list[str]:
        names = []
        if self.continual["variants"]:
            names += ["target_probe.csv", "target_probe.png"]
        if self.cka_tasks:
            names += ["cka.csv", "cka_deltas.csv"]
        if self.mmd_tasks:
            names += ["mmd.csv", "rpg.csv", "rpg_correlations.csv"]
        if self.lens_tasks:
            names += ["lens.csv", "lens_summary.csv"]
        return [layout.analysis_file(n) for n in names]
