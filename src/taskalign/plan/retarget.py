"""Point a whole config at your own cohort: the data, pretraining, continual pretraining and every task at once.

A cohort is referred to from four places (data.cohorts, pretrain.cohorts, continual.cohort, tasks.<t>.cohort);
changing only `data.cohorts` leaves the others naming built-in cohorts that no longer exist. Every task it writes
names its type (`tasks.<name>.type`).
"""

from __future__ import annotations

import copy

from taskalign.tasks.spec import TASK_TYPES


def retarget(config: dict, name: str, spec: dict, *, tasks: list[str] | None = None,
             keep_cohorts: bool = False) -> dict:
    """A copy of `config` whose every cohort reference is `name` (defined by `spec`, e.g. {"source": "picai",
    "path": "/data/picai"}). `tasks` keeps only those tasks (and the fine-tuning blocks' task lists shrink to
    them); `keep_cohorts` keeps the other cohorts defined (the pretraining corpus, say) instead of dropping them."""
    config = copy.deepcopy(config)
    unknown = sorted(set(tasks or []) - set(config["tasks"]))
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; the config has {', '.join(config['tasks'])}")
    cohorts = config["data"]["cohorts"] if keep_cohorts else {}
    config["data"]["cohorts"] = {**cohorts, name: spec}
    config["pretrain"]["cohorts"] = [name]
    config["continual"]["cohort"] = name
    if tasks is not None:
        config["tasks"] = {t: s for t, s in config["tasks"].items() if t in tasks}
        for block in config["finetune"]["runs"]:
            if block.get("tasks", "all") != "all":
                block["tasks"] = [t for t in block["tasks"] if t in tasks]
        config["finetune"]["runs"] = [b for b in config["finetune"]["runs"] if b.get("tasks", "all") == "all"
                                      or b["tasks"]]
    for task, task_spec in config["tasks"].items():
        task_spec["cohort"] = name
        if "type" not in task_spec:  # a config from before task types: its names were the types
            if task not in TASK_TYPES:
                raise ValueError(f"tasks.{task}: no 'type' and the name is no task type ({', '.join(TASK_TYPES)})")
            task_spec["type"] = task
    return config
