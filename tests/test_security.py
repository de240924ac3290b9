"""Nothing runs that the user did not write: pickled code planted in any file the pipeline reads back never runs,
paths with shell syntax in them stay text, and results are written with the mode the umask gives."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import tokenize

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, SNAKEMAKE, TINY_PHANTOM, TINY_PREPROCESS

# A folder-name fragment with what the shell treats specially: spaces, apostrophes, non-ASCII text and a command
# substitution that creates `pwned` in the job's working directory. Two apostrophes: inside the old prefix's
# single quotes they pair up, the substitution lands outside the quotes and runs.
WEIRD = "lab's dåta $(touch pwned) it's"


class Payload:
    """What an attacker plants: unpickling it runs `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def plant_torch(path, marker, **extra):
    torch.save({**extra, "payload": Payload(marker)}, path)


def plant_npy(path, marker):
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)


def plant_npz(path, marker):
    objects = np.array([Payload(marker)], dtype=object)
    with open(path, "wb") as handle:
        np.savez(handle, case_id=objects, patient_id=objects, split=objects, final=np.zeros((1, 2)))


def test_the_planted_files_run_their_payload_when_read_unrestricted(tmp_path):
    """The control: the files planted below are live, so the tests' `not marker.exists()` means something."""
    loads = {"pickle": (lambda p, m: p.write_bytes(pickle.dumps(Payload(m))), lambda p: pickle.loads(p.read_bytes())),
             "torch": (plant_torch, lambda p: torch.load(p, weights_only=False)),
             "npy": (plant_npy, lambda p: np.load(p, allow_pickle=True)),
             "npz": (plant_npz, lambda p: np.load(p, allow_pickle=True)["case_id"])}
    for name, (plant, load) in loads.items():
        path, marker = tmp_path / f"payload.{name}", tmp_path / f"{name}.ran"
        plant(path, marker)
        assert not marker.exists()
        load(path)
        assert marker.exists(), name


def cache_case(case_dir):
    """A cache folder whose image.npy is the payload (meta.json read first, as the readers do)."""
    case_dir.mkdir()
    (case_dir / "meta.json").write_text(json.dumps({"case_id": "c0", "channels": ["t2w"], "spacing_mm": [1, 1, 1]}))
    plant_npy(case_dir / "image.npy", case_dir.parent / "marker")
    return case_dir


def read_encoder_file(path):
    from taskalign.models.checkpoint_io import EncoderFile

    EncoderFile.read(path)


def read_external_checkpoint(path):
    from taskalign.models.checkpoint_io import import_checkpoint
    from test_finetune import GEOMETRY

    import_checkpoint(path, "vit3d", "profound", GEOMETRY)  # what the import_encoder rule runs


def read_task_model(path):
    from taskalign.models.task_model import load_task_model

    load_task_model(path, task=None, channels=["t2w"])


def read_features(path):
    from taskalign.analysis.feature_files import load_features

    load_features(path)


def read_predictions(path):
    from taskalign.runtime import read_arrays

    read_arrays(path)


def read_cached_image(path):
    from taskalign.data.dataset import CacheDataset

    CacheDataset(pd.DataFrame({"case_id": ["c0"], "cache_dir": [str(path.parent)]}))[0]


def read_qc_montage(path):
    from taskalign.data.qc import montage_case

    montage_case(path.parent, path.parent / "montage.png")


# Every kind of file a job reads back that could carry a pickle: (file name, how it is planted, the job's reader).
PLANTED = {
    "encoder file (.safetensors)": ("encoder.safetensors", plant_torch, read_encoder_file),
    "imported checkpoint (.pt)": ("checkpoint.pt", plant_torch, read_external_checkpoint),
    "task model file": ("model.safetensors", plant_torch, read_task_model),
    "features (.npz)": ("features.npz", plant_npz, read_features),
    "predictions (.npz)": ("predictions.npz", plant_npz, read_predictions),
    "cached image (.npy), dataset": ("case/image.npy", None, read_cached_image),
    "cached image (.npy), QC montage": ("case/image.npy", None, read_qc_montage),
}


@pytest.mark.parametrize("kind", list(PLANTED))
def test_a_payload_in_a_file_read_back_never_runs_and_the_file_is_named(tmp_path, kind):
    name, plant, read = PLANTED[kind]
    path, marker = tmp_path / name, tmp_path / "marker"
    if plant is None:
        cache_case(path.parent)
    else:
        plant(path, marker)
    with pytest.raises(ValueError) as refused:
        read(path)
    assert str(path) in str(refused.value), f"{kind}: the message names the file: {refused.value}"
    assert "set to `False`" not in str(refused.value), "no advice to load the file unrestricted"
    assert not marker.exists(), f"{kind}: the planted payload ran"


@pytest.mark.parametrize("planted", ["pickled payload", "raw pickle", "truncated", "no fingerprint"])
def test_a_planted_resume_file_is_ignored_with_the_reason_logged_and_runs_nothing(tmp_path, caplog, planted):
    """The job trains afresh (the same history as a run that found no file) and says why it ignored the file."""
    from test_resume import tiny_fit

    plain, _ = tiny_fit(tmp_path / "plain", None)
    resume_file, marker = tmp_path / "job" / "resume" / "last.pt", tmp_path / "marker"
    resume_file.parent.mkdir(parents=True)
    if planted == "pickled payload":  # the fingerprint of the run, as an attacker who read the config would write
        plant_torch(resume_file, marker, fingerprint="x", totals={"wall_seconds": 0.0, "epoch_seconds": 0.0})
    elif planted == "raw pickle":
        resume_file.write_bytes(pickle.dumps({"fingerprint": "x", "payload": Payload(marker)}))
    elif planted == "truncated":
        plant_torch(resume_file, marker, fingerprint="x")
        resume_file.write_bytes(resume_file.read_bytes()[:200])
    else:
        torch.save({"epoch": 1}, resume_file)
    with caplog.at_level("INFO", logger="taskalign.train"):
        fitted, _ = tiny_fit(tmp_path / "job", None)
    assert not marker.exists(), "the planted payload ran"
    assert "resuming from" not in caplog.text
    expected = "no fingerprint, totals" if planted == "no fingerprint" else "not a resume state that loads as tensors"
    ignored = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"ignoring {resume_file}")]
    assert ignored and expected in ignored[0] and "training starts afresh" in ignored[0], caplog.text
    assert "set to `False`" not in ignored[0], "no advice to load the file unrestricted"
    if planted == "pickled payload":
        assert "unsupported GLOBAL posix.system" in ignored[0], ignored[0]
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in plain.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in fitted.history] == strip


def test_the_library_unpickles_nothing():
    """Every torch.load passes weights_only=True and every np.load allow_pickle=False (a call without them uses
    the library's default, which has changed before)."""
    calls = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "np"):
                keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                needed = "weights_only" if node.func.value.id == "torch" else "allow_pickle"
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", needed, keywords.get(needed)))
    assert calls, "the scan found the loads"
    assert [c for c in calls if c[2] is not (c[1] == "weights_only")] == []
    assert "weights_only=False" not in "".join(p.read_text() for p in (REPO / "src").rglob("*.py"))


def shell_commands() -> dict[str, str]:
    """{file:rule: its shell command text} for every `shell:` in workflow/rules/ (the string literals after it,
    one or several, on its line or the next ones, triple-quoted or not)."""
    commands = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(smk.read_text()).readline)
                  if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)]
        rule = None
        for i, token in enumerate(tokens):
            if token.string == "rule" and tokens[i + 1].type == tokenize.NAME:
                rule = tokens[i + 1].string
            if token.string == "shell" and tokens[i + 1].string == ":":
                strings = []
                for following in tokens[i + 2:]:
                    if following.type != tokenize.STRING:
                        break
                    strings.append(ast.literal_eval(following.string))
                commands[f"{smk.name}:{rule}"] = "".join(strings)
        assert len([c for c in commands if c.startswith(smk.name)]) == smk.read_text().count("shell:"), smk
    return commands


def unquoted_fields(command: str) -> list[str]:
    """Placeholders that reach the shell as they are: all but `{threads}` (an integer Snakemake sets) need `:q`."""
    command = command.replace("{{", "").replace("}}", "")
    return [m[0] for m in re.finditer(r"\{([^{}:]+)(:[^{}]*)?\}", command)
            if m[1] != "threads" and not (m[2] or "").endswith("q")]


def test_lint_every_value_in_a_shell_command_is_quoted():
    commands = shell_commands()
    assert len(commands) >= 20 and "data.smk:check_manifest" in commands, sorted(commands)
    assert {rule: fields for rule, command in commands.items() if (fields := unquoted_fields(command))} == {}
    # the lint itself catches what it is for
    assert unquoted_fields("x --manifest {input} --out {output.a} 2> {log}") == ["{input}", "{output.a}", "{log}"]
    assert unquoted_fields("x {params.spec:q} {wildcards.cohort:q} --threads {threads}") == []


def test_the_data_stage_runs_from_paths_with_shell_syntax_and_executes_nothing(tmp_path):
    """Checkout, working directory, config file and manifest all under folders named like WEIRD; the data stage
    of one tiny manifest cohort (check, shared studies, preprocessing) runs and nothing in a name is executed."""
    from taskalign.data.phantom import write_cohort
    from taskalign.runtime import current_umask

    checkout, work, data = (tmp_path / f"{what} {WEIRD}" for what in ("checkout", "work", "data"))
    checkout.mkdir()
    shutil.copy(REPO / "Snakefile", checkout)
    for folder in ("workflow", "src", "config", "envs", "profiles"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = write_cohort("mine", {"train": 2, "val": 1, "test": 1}, TINY_PHANTOM, 0, data)
    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["data"]["cohorts"] = {"mine": {"source": "manifest", "path": str(manifest)}}
    config["preprocess"] = {**TINY_PREPROCESS, "qc_cases": 1}
    config["pretrain"]["cohorts"] = ["mine"]
    config["continual"]["cohort"] = "mine"
    config["tasks"] = {name: {**spec, "cohort": "mine"} for name, spec in config["tasks"].items()}
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(checkout / "Snakefile"), "data", "--cores", "2",
                           "--configfile", str(work / "config.yaml")], cwd=work, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    index = pd.read_csv(work / "results/cache/mine.csv")
    assert len(index) == 4 and list((work / "results/qc/mine").glob("*.png"))
    assert list(tmp_path.rglob("pwned")) == [], "a command substitution in a path ran"
    mode = 0o666 & ~current_umask()
    written = {str(p.relative_to(work)): stat.S_IMODE(p.stat().st_mode) for p in (work / "results").rglob("*")
               if p.is_file()}
    assert len(written) > 10 and {k: oct(v) for k, v in written.items() if v != mode} == {}, "modes follow the umask"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path, umask):
    import SimpleITK as sitk
    from safetensors.torch import save_file

    from taskalign.analysis.feature_files import write_features
    from taskalign.data.image_io import write_image
    from taskalign.runtime import atomic_path

    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
        with atomic_path(tmp_path / "atomic.csv") as tmp:
            pd.DataFrame({"a": [1]}).to_csv(tmp, index=False)
        with atomic_path(tmp_path / "weights.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        write_image(sitk.Image(4, 4, 4, sitk.sitkUInt8), tmp_path / "image.nii.gz")
        cases = pd.DataFrame({"case_id": ["a"], "patient_id": ["p"], "split": ["test"]})
        write_features(tmp_path / "features.npz", cases, {"final": np.zeros((1, 2))})
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask), {k: oct(v) for k, v in modes.items()}
    assert len(modes) == 5, "no temporary file left behind"
