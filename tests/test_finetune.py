"""Fine-tuning: task samples, protocols, the combinations that make a run, and specialists/encoders training
and evaluating end to end on the phantom cache."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from taskalign.data.dataset import read_index
from taskalign.evaluate.evaluate import EvaluationJob, run_evaluation
from taskalign.models.checkpoint_io import save_encoder
from taskalign.models.families.vit3d import ViT3dEncoder as Encoder, ViT3dGeometry as EncoderGeometry
from taskalign.models.heads import encoder_model
from taskalign.tasks.samples import TaskDataset, usable_rows
from taskalign.tasks.spec import Task, check_combination
from taskalign.models.task_model import apply_protocol
from taskalign.train.finetune import FinetuneJob, run_finetune

GEOMETRY = EncoderGeometry(3, (16, 32, 32), (4, 8, 8), 32, 64, 4, 2)
CHANNELS = ["t2w", "dwi", "adc"]
HEAD = {"mlp_hidden": 16, "decoder_channels": 8, "layers": [0, 1, 2, 3]}
TASKS = {
    "pirads_cls": {"type": "pirads_cls", "cohort": "anatomy", "inputs": CHANNELS},
    "volume_reg": {"type": "volume_reg", "cohort": "anatomy", "inputs": ["t2w"]},
    "zone_seg": {"type": "zone_seg", "cohort": "anatomy", "inputs": ["t2w"]},
    "super_res": {"type": "super_res", "cohort": "anatomy", "inputs": ["t2w"], "factor": 4},
    "distortion": {"type": "distortion", "cohort": "anatomy", "inputs": ["t2w"], "amplitude_mm": 8, "decay_mm": 6},
}


def task(name: str) -> Task:
    return Task.from_config(name, TASKS[name])


def params(seed: int = 0, epochs: int = 3) -> dict:
    return {"channels": CHANNELS, "seed": seed, "epochs": epochs, "lr": 2e-3, "warmup_epochs": 0,
            "weight_decay": 0.0, "augment": {"prob": 0.3, "flip_prob": 0.5, "rotate_deg": 10, "zoom": [0.9, 1.1],
                                             "intensity": 0.1},
            "batch_size": 4,
            "head": HEAD, "specialist": {"channels": [4, 8, 16]}}


@pytest.mark.parametrize("init, protocol", [("random", "full"), ("scratch", "frozen"), ("specialist", "partial:2"),
                                            ("pretrained", "full"), ("continual:mae", "partial:x")])
def test_combinations_that_make_no_run_are_refused(init, protocol):
    with pytest.raises(ValueError, match="init|protocol"):
        check_combination(init, protocol)
    check_combination("pretrained:mae", "partial:2")  # and a valid one passes


def test_super_resolution_input_has_a_quarter_of_the_depth(tiny_cache):
    rows = usable_rows(read_index([tiny_cache["anatomy"]], splits=["val"]), task("super_res"))
    sample = TaskDataset(rows, task("super_res"), CHANNELS, train=False, seed=0).sample(0)
    assert sample["low_res"].shape == (1, 4, 32, 32)
    assert sample["target"].shape == (1, 16, 32, 32) and sample["image"].shape == (3, 16, 32, 32)
    assert torch.count_nonzero(sample["image"][1:]) == 0  # T2W only
    assert not torch.allclose(sample["image"][0], sample["target"][0])  # the input lost through-plane detail


def test_distortion_moves_tissue_near_the_rectum_only(tiny_cache):
    rows = usable_rows(read_index([tiny_cache["anatomy"]], splits=["val"]), task("distortion"))
    data = TaskDataset(rows, task("distortion"), CHANNELS, train=False, seed=0)
    sample = data.sample(0)
    rectum = np.load(f"{rows.cache_dir[0]}/rectum.npy") > 0
    change = (sample["image"][0] - sample["target"][0]).abs().numpy()
    from scipy.ndimage import distance_transform_edt

    far = distance_transform_edt(~rectum, sampling=(4.0, 3.0, 3.0)) > 40
    assert change[rectum].mean() > 10 * max(change[far].mean(), 1e-6)
    assert torch.equal(data.sample(0)["image"], sample["image"])  # val/test degradations are fixed per case


def _step(model, x):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x).float().pow(2).mean().backward()
    optimizer.step()


@pytest.mark.parametrize("protocol, changed_blocks", [("frozen", []), ("partial:2", [2, 3]), ("full", [0, 1, 2, 3])])
def test_protocols_train_exactly_the_intended_parameters(protocol, changed_blocks):
    torch.manual_seed(0)
    model = encoder_model(task("volume_reg"), Encoder(GEOMETRY), CHANNELS, HEAD)
    before = copy.deepcopy(model.state_dict())
    apply_protocol(model, protocol)
    _step(model, torch.randn(2, 3, 16, 32, 32))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if k.startswith("head.")}, "the head always trains"
    blocks = sorted({int(k.split(".")[2]) for k in changed if k.startswith("encoder.blocks.")})
    assert blocks == changed_blocks
    assert ("encoder.norm.weight" in changed) == (protocol != "frozen")
    assert ("encoder.patch_embedding.patch_embeddings.weight" in changed) == (protocol == "full")


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    save_encoder(Encoder(GEOMETRY), path)
    return path


@pytest.mark.parametrize("name", ["pirads_cls", "volume_reg", "zone_seg", "super_res", "distortion"])
@pytest.mark.parametrize("init", ["specialist", "scratch"])
def test_models_train_and_evaluate_for_every_task_type(tiny_cache, tmp_path, encoder_file, name, init):
    out = tmp_path / "run"
    epochs = 3
    p = {**params(epochs=epochs), "task": TASKS[name]}
    history = run_finetune(FinetuneJob(task=task(name), init=init, protocol="full",
                                       encoder_path=None if init == "specialist" else encoder_file,
                                       indexes=[tiny_cache["anatomy"]], params=p, model_out=out / "model.safetensors",
                                       history_csv=out / "history.csv", curve_png=out / "curve.png",
                                       timing_json=out / "timing.json", resume_dir=tmp_path / "resume"))
    assert len(history) == epochs and all(np.isfinite(row["train_total"]) for row in history)
    if name in ("super_res", "distortion"):  # they start at the identity: a small step, on fixed val inputs
        assert history[-1]["val_l1"] < history[0]["val_l1"], history
    else:  # each epoch draws new augmentations, the first epoch's loss is far above where these models end
        assert history[-1]["train_total"] < history[0]["train_total"], history
    assert json.loads((out / "timing.json").read_text())["epochs"] == epochs
    metrics = run_evaluation(EvaluationJob(task=task(name), model_path=out / "model.safetensors",
                                           indexes=[tiny_cache["anatomy"]],
                                           params={**p, "batch_size": 2, "bootstrap": 20, "save_volumes": 1},
                                           metrics_csv=out / "metrics.csv", cases_csv=out / "cases.csv",
                                           predictions_npz=out / "pred.npz", montage_png=out / "montage.png"))
    ranges = {"auc": (0, 1), "auc_ge3": (0, 1), "auc_ge4": (0, 1), "spec_at_sens90": (0, 1), "accuracy": (0, 1),
              "mse": (0, np.inf), "mae_ml": (0, np.inf), "ssim": (-1, 1), "l1": (0, np.inf)}
    for row in metrics.itertuples():
        low, high = ranges.get(row.metric, (0, 1))  # dice*
        assert np.isnan(row.value) or low <= row.value <= high, row
    assert metrics["primary"].sum() == 1
    cases = pd.read_csv(out / "cases.csv", dtype={"case_id": str})
    manifest = read_index([tiny_cache["anatomy"]], splits=["test"])
    assert set(cases["case_id"]) <= set(manifest["case_id"]) and len(cases) == len(usable_rows(manifest, task(name)))
    if name == "pirads_cls":  # each test negative's call at the validation split's 90%-sensitivity threshold
        assert "spec_at_sens90" in cases.columns and cases.loc[cases["true"] >= 3, "spec_at_sens90"].isna().all()
    # the kind's trivial baseline on the same cases, and the model's paired gain over it
    trivial = metrics.set_index("metric")["trivial"]
    if name == "pirads_cls":  # constant probabilities: no ranking, no negative spared at any threshold
        one_class = np.isnan(metrics.set_index("metric").loc["auc", "value"])  # the tiny test split may hold one
        assert (one_class or trivial["auc"] == 0.5) and trivial["spec_at_sens90"] == 0.0, trivial
    if name == "zone_seg":  # an empty mask: Dice 0 for every zone a test case has
        assert trivial["dice"] == 0.0 and trivial["dice_tz"] == 0.0
    if name == "volume_reg":  # the training mean: its mean squared error in training-SD units, from the cases
        assert trivial["mse"] == pytest.approx((cases["true_norm"] ** 2).mean())
    if name in ("super_res", "distortion"):  # the degraded input returned: SSIM < 1 against the clean image
        assert 0 < trivial["ssim"] < 1
    gains = metrics.dropna(subset=["gain_low"])
    assert (gains["gain_low"] <= gains["value"] - gains["trivial"] + 1e-9).all()
    assert (gains["value"] - gains["trivial"] <= gains["gain_high"] + 1e-9).all()


def test_training_batches_do_not_depend_on_loader_workers(tiny_cache):
    """Augmentation and degradation follow the item seeds the sampler draws at the start of an epoch: loading in
    the main process or in a (persistent) worker gives the same batches, and leaves the global RNG that dropout
    draws from in the same state."""
    from taskalign.tasks.loader import make_loader
    from taskalign.tasks.rng import seed_epoch

    rows = usable_rows(read_index([tiny_cache["anatomy"]], splits=["train"]), task("distortion"))
    runs = {}
    for workers in (0, 1):
        dataset = TaskDataset(rows, task("distortion"), CHANNELS, train=True, seed=0,
                              augment={**params()["augment"], "prob": 1.0})
        loader = make_loader(dataset, 4, shuffle=True, seed=0, device=torch.device("cpu"), workers=workers)
        batches = []
        for epoch in range(2):
            seed_epoch(0, epoch)
            batches += [(b["index"], b["image"], b["target"]) for b in map(dataset.on_device, loader)]
            batches.append(torch.rand(3))  # the next draw from the global RNG (dropout's)
        runs[workers] = batches
    for a, b in zip(*runs.values(), strict=True):
        for x, y in zip(a, b) if isinstance(a, tuple) else [(a, b)]:
            assert torch.equal(x, y)
    epoch_0, epoch_1 = runs[0][0], runs[0][3]
    assert not torch.equal(epoch_0[1], epoch_1[1]), "a new epoch draws new augmentations"


class SeededItems(torch.utils.data.Dataset):
    """Items that depend only on the (index, seed) key the sampler draws, like augmented cache items."""

    def __len__(self):
        return 12

    def __getitem__(self, key):
        index, seed = key
        noise = torch.randn(4, generator=torch.Generator().manual_seed(seed))
        return {"x": noise + index, "y": torch.tensor([float(index % 3)])}


@pytest.mark.parametrize("workers", [0, 1])
def test_starting_epochs_ahead_changes_no_batch_or_weight(tmp_path, workers):
    """`fit` has the training loader start epoch e+1 (draw its order) before validating epoch e, and
    `start_first_epoch` draws epoch 1's before the model is built, so that a worker loads their first batches
    meanwhile. The run must equal a plain loop that seeds each epoch as it starts, bit for bit, even when
    validation draws from the global RNG (as MAE masking does), training uses dropout and the model's initial
    weights come from the RNG the first epoch's order is drawn from."""
    from taskalign.tasks.loader import make_loader
    from taskalign.tasks.rng import preserved_rngs, seed_epoch
    from taskalign.train.loop import Schedule, adamw_warmup_cosine, fit, train_one_epoch
    from taskalign.train.resume import ResumeFile

    cpu, epochs = torch.device("cpu"), 4

    def run(ahead: bool):
        torch.manual_seed(0)
        loader = make_loader(SeededItems(), 4, shuffle=True, seed=0, device=cpu, workers=workers if ahead else 0)
        if ahead:
            loader.start_first_epoch()
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
        optimizer, scheduler = adamw_warmup_cosine(model.parameters(), lr=1e-2, weight_decay=0.0, warmup_steps=1,
                                                   total_steps=12)
        seen = []

        def loss_fn(net, batch):
            seen.append(batch["x"])
            return {"total": ((net(batch["x"]) - batch["y"]) ** 2).mean()}

        def train_epoch(progress=None):
            return train_one_epoch(model, loader, optimizer, scheduler, cpu, loss_fn, progress)

        def validate():
            return {"draw": float(torch.rand(()))}

        if ahead:
            fitted = fit(model=model, schedule=Schedule(optimizer, scheduler, epochs, "val_draw", "max"),
                         loader=loader, train_epoch=train_epoch, validate=validate,
                         resume=ResumeFile(tmp_path / "resume", "x"), stage="test")
            losses = [row["train_total"] for row in fitted.history]
        else:
            losses = []
            for epoch in range(epochs):
                seed_epoch(0, epoch)
                losses.append(train_epoch()["total"])
                with preserved_rngs():
                    validate()
        return seen, losses, model.state_dict()

    plain, ahead = run(False), run(True)
    assert len(plain[0]) == len(ahead[0]) == 12
    assert all(torch.equal(a, b) for a, b in zip(plain[0], ahead[0]))
    assert plain[1] == ahead[1]
    assert all(torch.equal(plain[2][k], ahead[2][k]) for k in plain[2])


def test_an_epoch_started_ahead_must_be_the_one_that_trains():
    from taskalign.tasks.loader import make_loader

    loader = make_loader(SeededItems(), 4, shuffle=True, seed=0, device=torch.device("cpu"), workers=0)
    loader.start_first_epoch()
    with pytest.raises(RuntimeError, match="epoch 1 was started ahead, but epoch 3 trains"):
        loader.begin_epoch(2)


@pytest.mark.parametrize("name", ["super_res", "distortion"])
def test_residual_restoration_models_start_as_the_identity(name):
    from taskalign.models.heads import specialist_model

    torch.manual_seed(0)
    image = torch.randn(2, 3, 16, 32, 32)
    for model in (encoder_model(task(name), Encoder(GEOMETRY), CHANNELS, HEAD),
                  specialist_model(task(name), CHANNELS, {"channels": [4, 8, 16]})):
        assert torch.equal(model(image), image[:, :1]), type(model).__name__
    translation = encoder_model(Task.from_config("translation", {"type": "translation", "cohort": "anatomy",
                                                                 "inputs": ["t2w"]}),
                                Encoder(GEOMETRY), CHANNELS, HEAD)
    assert not torch.equal(translation(image), image[:, :1])  # no residual where input and target differ


def test_mask_prior_counts_the_training_masks(tmp_path):
    from taskalign.models.task_model import mask_prior

    zones = np.zeros((2, 4, 5), np.uint8)
    zones[0, :2] = 1  # 10 TZ voxels, 5 PZ, 25 background
    zones[1, 0] = 2
    lesion = np.zeros((2, 4, 5), np.uint8)
    lesion[0, 0, :3] = 1
    lesion[1, 0, 0] = 2  # a second lesion's label counts as foreground
    for case, (z, les) in {"a": (zones, lesion), "b": (np.zeros_like(zones), np.zeros_like(lesion))}.items():
        (tmp_path / case).mkdir()
        np.save(tmp_path / case / "zones.npy", z)
        np.save(tmp_path / case / "lesion.npy", les)
    rows = pd.DataFrame({"cache_dir": [str(tmp_path / "a"), str(tmp_path / "b")]})
    binary = mask_prior(rows, Task.from_config("lesion_seg", {"type": "lesion_seg", "cohort": "promis",
                                                              "inputs": CHANNELS}))
    np.testing.assert_allclose(binary.numpy(), np.array([77, 5]) / 82)  # 76 + 1, 4 + 1 of 80 voxels
    zone = mask_prior(rows, task("zone_seg")).numpy()
    assert zone.shape == (9,)
    np.testing.assert_allclose(zone[:3], np.array([66, 11, 6]) / 89)
    np.testing.assert_allclose(zone[3:], 1 / 89)  # absent structures: the added count only


@pytest.mark.parametrize("name", ["lesion_seg", "zone_seg"])
def test_segmentation_models_start_at_the_class_prior(name):
    # From a zero output bias every voxel starts at p = 0.5 (1/9 for the zones): the lesion UNet of the default
    # run stayed there (val Dice 0.007 after 12 epochs). Started at the prior, the mean prediction is near it.
    from taskalign.models.heads import n_model_outputs, specialist_model
    from taskalign.models.task_model import start_at_prior

    seg = Task.from_config(name, {"type": name, "cohort": "anatomy", "inputs": CHANNELS})
    n = max(n_model_outputs(seg), 2)
    prior = torch.full((n,), 0.02 / (n - 1), dtype=torch.float64)
    prior[0] = 0.98
    torch.manual_seed(0)
    image = torch.randn(2, 3, 16, 32, 32)
    for model in (encoder_model(seg, Encoder(GEOMETRY), CHANNELS, HEAD),
                  specialist_model(seg, CHANNELS, {"channels": [4, 8, 16]})):
        with torch.no_grad():
            before = model(image)
            start_at_prior(model, seg, prior)
            after = model(image)
        probs = [torch.sigmoid(out).mean() if n_model_outputs(seg) == 1 else out.softmax(1)[:, 0].mean()
                 for out in (before, after)]
        background = (lambda p: 1 - p) if n_model_outputs(seg) == 1 else (lambda p: p)
        assert background(probs[0]) < 0.7, type(model).__name__  # the zero-bias start
        assert background(probs[1]) > 0.95, type(model).__name__


def test_resnet_specialist_stem_stride_comes_from_the_config_and_old_files_keep_monais_default(tmp_path):
    """The ResNet stem follows `resnet_stem_stride`; a model file saved without the key (trained before it
    existed, with MONAI's stride 1) rebuilds with stride 1 and loads strictly."""
    from safetensors.torch import save_file

    from taskalign.models.heads import specialist_model
    from taskalign.models.task_model import load_task_model

    strided = specialist_model(task("volume_reg"), CHANNELS, {"channels": [4, 8, 16], "resnet_stem_stride": [1, 2, 2]})
    old = specialist_model(task("volume_reg"), CHANNELS, {"channels": [4, 8, 16]})
    assert strided.conv1.stride == (1, 2, 2) and old.conv1.stride == (1, 1, 1)
    image = torch.randn(2, 3, 16, 32, 32)
    assert strided(image).shape == old(image).shape == (2, 1)
    meta = {"init": "specialist", "geometry": None, "architecture": {"specialist": {"channels": [4, 8, 16]}}}
    save_file(old.state_dict(), str(tmp_path / "old.safetensors"), metadata={k: json.dumps(v) for k, v in meta.items()})
    loaded, _ = load_task_model(tmp_path / "old.safetensors", task("volume_reg"), CHANNELS)
    assert loaded.conv1.stride == (1, 1, 1)
    assert torch.equal(loaded(image), old.eval()(image))


def test_augmentation_without_metadata_tracking_gives_the_same_arrays(tiny_cache):
    """CacheDataset augments with MONAI's metadata tracking off (faster): same arrays as MONAI's default."""
    from taskalign.data.dataset import CacheDataset
    from taskalign.tasks.augment import augmentation

    rows = usable_rows(read_index([tiny_cache["anatomy"]], splits=["train"]), task("zone_seg"))
    transform = augmentation(task("zone_seg"), {**params()["augment"], "prob": 1.0}, ("zones",))
    augmented = CacheDataset(rows, masks=("zones",), transform=transform)
    raw = CacheDataset(rows, masks=("zones",))
    for i in range(len(rows)):
        transform.set_random_state(seed=100 + i)
        tracked = transform(raw[i])
        untracked = augmented[(i, 100 + i)]
        assert type(tracked["image"]).__name__ == "MetaTensor" and type(untracked["image"]) is torch.Tensor
        for key in ("image", "zones"):
            assert torch.equal(tracked[key].as_tensor(), untracked[key])
    assert not torch.equal(untracked["image"], raw[len(rows) - 1]["image"]), "the augmentation ran"


@pytest.mark.parametrize("protocol, stored_blocks", [("frozen", set()), ("partial:2", {2, 3})])
def test_a_run_with_a_frozen_encoder_stores_what_it_trained_and_names_the_encoder(tiny_cache, tmp_path, protocol,
                                                                                   stored_blocks):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from taskalign.models.checkpoint_io import load_encoder
    from taskalign.models.task_model import load_task_model

    torch.manual_seed(0)
    encoder = tmp_path / "pretrain" / "encoder.safetensors"
    save_encoder(Encoder(GEOMETRY), encoder)
    out = tmp_path / "finetune" / "run"
    p = {**params(epochs=1), "task": TASKS["zone_seg"]}
    run_finetune(FinetuneJob(task=task("zone_seg"), init="pretrained:mae", protocol=protocol, encoder_path=encoder,
                             indexes=[tiny_cache["anatomy"]], params=p, model_out=out / "model.safetensors",
                             history_csv=out / "history.csv", curve_png=out / "curve.png",
                             timing_json=out / "timing.json", resume_dir=tmp_path / "resume"))
    stored = load_file(str(out / "model.safetensors"))
    blocks = {int(k.split(".")[2]) for k in stored if k.startswith("encoder.blocks.")}
    assert blocks == stored_blocks and "encoder.patch_embedding.position_embeddings" not in stored
    assert any(not k.startswith("encoder.") for k in stored), "the head is stored"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        reference = json.loads(f.metadata()["encoder"])
    assert reference["file"] == "../../pretrain/encoder.safetensors", "relative to the model file"

    model, _ = load_task_model(out / "model.safetensors", task("zone_seg"), CHANNELS)
    original = load_encoder(encoder).state_dict()
    for key, value in model.encoder.state_dict().items():
        expected = stored.get(f"encoder.{key}", original[key])
        assert torch.equal(value, expected), key
    run_evaluation(EvaluationJob(task=task("zone_seg"), model_path=out / "model.safetensors",
                                 indexes=[tiny_cache["anatomy"]], params={**p, "bootstrap": 10, "save_volumes": 0},
                                 metrics_csv=out / "metrics.csv", cases_csv=out / "cases.csv",
                                 predictions_npz=out / "pred.npz", montage_png=out / "montage.png"))

    torch.manual_seed(1)
    save_encoder(Encoder(GEOMETRY), encoder)  # rewritten upstream since the run
    with pytest.raises(ValueError, match="sha256"):
        load_task_model(out / "model.safetensors", task("zone_seg"), CHANNELS)


def test_compile_is_used_on_cuda_only_unless_asked_for():
    from taskalign.train.loop import TrainingOptions

    model = torch.nn.Linear(2, 2)
    for setting in ("auto", "off"):
        assert TrainingOptions(compile=setting).training_module(model, torch.device("cpu")) is model


DDPM = {"type": "translation_ddpm", "cohort": "anatomy", "inputs": ["t2w"], "timesteps": 20, "sample_steps": 2}


@pytest.mark.parametrize("init, protocol", [("random", "frozen"), ("specialist", "full")])
def test_ddpm_translation_trains_on_noise_and_is_scored_on_samples(tiny_cache, tmp_path, encoder_file, init,
                                                                   protocol):
    """001's translation as a DDPM through the same finetune and evaluate stages: the FM (frozen, as 001 runs
    ProFound) or MONAI's DiffusionModelUNet predicts the noise; test SSIM is of samples drawn in 2 steps."""
    ddpm = Task.from_config("t2w_to_dwi", DDPM)
    out = tmp_path / "run"
    epochs = 1 if init == "specialist" else 2
    p = {**params(epochs=epochs), "specialist": {"channels": [4, 4]}}
    history = run_finetune(FinetuneJob(task=ddpm, init=init, protocol=protocol,
                                       encoder_path=None if init == "specialist" else encoder_file,
                                       indexes=[tiny_cache["anatomy"]], params=p, model_out=out / "model.safetensors",
                                       history_csv=out / "history.csv", curve_png=out / "curve.png",
                                       timing_json=out / "timing.json", resume_dir=tmp_path / "resume"))
    assert len(history) == epochs and all(np.isfinite(row["train_total"]) and np.isfinite(row["val_ssim"])
                                     for row in history)
    metrics = run_evaluation(EvaluationJob(task=ddpm, model_path=out / "model.safetensors",
                                           indexes=[tiny_cache["anatomy"]],
                                           params={**p, "batch_size": 2, "bootstrap": 20, "save_volumes": 1},
                                           metrics_csv=out / "metrics.csv", cases_csv=out / "cases.csv",
                                           predictions_npz=out / "pred.npz", montage_png=out / "montage.png"))
    values = metrics.set_index("metric")["value"]
    assert set(values.index) == {"ssim", "l1"} and -1 <= values["ssim"] <= 1 and values["l1"] > 0
    assert metrics.set_index("metric").loc["ssim", "primary"]
    if init == "specialist":
        return
    again = run_evaluation(EvaluationJob(task=ddpm, model_path=out / "model.safetensors",
                                         indexes=[tiny_cache["anatomy"]],
                                         params={**p, "batch_size": 2, "bootstrap": 20, "save_volumes": 1},
                                         metrics_csv=out / "m2.csv", cases_csv=out / "c2.csv",
                                         predictions_npz=out / "p2.npz", montage_png=out / "m2.png"))
    assert np.allclose(again["value"], metrics["value"])  # sampling starts from the same seeded noise


def test_the_noise_predictor_sees_the_noisy_target_in_its_channel_and_the_timestep():
    from taskalign.models.diffusion import NoisePredictor

    torch.manual_seed(0)
    model = encoder_model(Task.from_config("t2w_to_dwi", DDPM), Encoder(GEOMETRY), CHANNELS, HEAD).eval()
    assert isinstance(model, NoisePredictor) and model.target_channel == CHANNELS.index("dwi")
    condition = torch.zeros(2, 3, 16, 32, 32)
    condition[:, 0] = torch.randn(2, 16, 32, 32)  # the T2W; the DWI slot is zeroed by the task's inputs
    noisy = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        out = model(torch.cat([noisy, condition], dim=1), torch.tensor([5, 5]))
        assert out.shape == (2, 1, 16, 32, 32)
        assert not torch.allclose(out, model(torch.cat([noisy, condition], dim=1), torch.tensor([15, 15])))
        assert not torch.allclose(out, model(torch.cat([noisy.flip(0), condition], dim=1), torch.tensor([5, 5])))
        # one timestep for the batch (the sampling loop) is every item's
        torch.testing.assert_close(model(torch.cat([noisy, condition], dim=1), torch.tensor([5.0])), out)


def test_random_inputs_keep_one_diffusion_channel_per_sample_and_tversky_is_monais(tiny_cache):
    from monai.losses import TverskyLoss

    from taskalign.tasks.losses import task_loss

    lesion = Task.from_config("lesion_001", {"type": "lesion_seg", "cohort": "anatomy", "inputs": CHANNELS,
                                             "random_inputs": ["dwi", "adc"], "loss": "tversky"})
    rows = usable_rows(read_index([tiny_cache["anatomy"]]), lesion)
    kept = []
    for train in (False, True):
        data = TaskDataset(rows, lesion, CHANNELS, train=train, seed=0)
        for i in range(len(data)):
            image = data.sample(i)["image"]
            assert torch.count_nonzero(image[0]) > 0
            assert (torch.count_nonzero(image[1]) > 0) != (torch.count_nonzero(image[2]) > 0)  # dwi or adc
            kept.append(int(torch.count_nonzero(image[1]) > 0))
        if not train:
            assert torch.equal(data.sample(0)["image"], data.sample(0)["image"])  # val/test fixed per case
    assert 0 < np.mean(kept) < 1  # both channels are drawn
    logits, target = torch.randn(2, 1, 4, 8, 8), (torch.rand(2, 1, 4, 8, 8) > 0.7).float()
    torch.testing.assert_close(task_loss(lesion, None, "cpu")(logits, target),
                               TverskyLoss(sigmoid=True)(logits, target))


def test_a_task_name_is_only_a_name(tiny_cache, tmp_path, encoder_file):
    """A second zone segmentation under another name trains and evaluates as its type says."""
    second = Task.from_config("zones_second_cohort", {"type": "zone_seg", "cohort": "anatomy", "inputs": ["t2w"]})
    out = tmp_path / "run"
    p = params(epochs=1)
    run_finetune(FinetuneJob(task=second, init="scratch", protocol="full", encoder_path=encoder_file,
                             indexes=[tiny_cache["anatomy"]], params=p, model_out=out / "model.safetensors",
                             history_csv=out / "history.csv", curve_png=out / "curve.png",
                             timing_json=out / "timing.json", resume_dir=tmp_path / "resume"))
    metrics = run_evaluation(EvaluationJob(task=second, model_path=out / "model.safetensors",
                                           indexes=[tiny_cache["anatomy"]],
                                           params={**p, "batch_size": 2, "bootstrap": 5, "save_volumes": 1},
                                           metrics_csv=out / "metrics.csv", cases_csv=out / "cases.csv",
                                           predictions_npz=out / "pred.npz", montage_png=out / "montage.png"))
    assert set(metrics["task"]) == {"zones_second_cohort"}
    assert metrics.loc[metrics["primary"], "metric"].tolist() == ["dice"]


def test_head_features_move_under_a_frozen_encoder(tiny_cache, tmp_path, encoder_file):
    """001's D2P of a frozen FM is non-zero: at the `head` level the features are the head's (here the fused
    UperNet features), which fine-tuning moves while the encoder's own features stay where they were."""
    from taskalign.analysis.feature_files import load_features
    from taskalign.analysis.features import extract

    zones = task("zone_seg")
    out = tmp_path / "run"
    p = params(epochs=1)
    run_finetune(FinetuneJob(task=zones, init="pretrained:x", protocol="frozen", encoder_path=encoder_file,
                             indexes=[tiny_cache["anatomy"]], params=p, model_out=out / "model.safetensors",
                             history_csv=out / "history.csv", curve_png=out / "curve.png",
                             timing_json=out / "timing.json", resume_dir=tmp_path / "resume"))
    settings = {"task": TASKS["zone_seg"], "channels": CHANNELS, "layers": [1, 3], "batch_size": 4, "seed": 0,
                "head": HEAD}
    files = {}
    for name, path, source in [("pre", encoder_file, "encoder"), ("pre_again", encoder_file, "encoder"),
                               ("ft", out / "model.safetensors", "finetuned")]:
        files[name] = tmp_path / f"{name}.npz"
        extract(task=zones, model_path=path, source=source, indexes=[tiny_cache["anatomy"]], params=settings,
                out_npz=files[name])
    (cases, pre), (_, again), (ft_cases, ft) = (load_features(files[k]) for k in ("pre", "pre_again", "ft"))
    assert list(cases["case_id"]) == list(ft_cases["case_id"])
    assert pre["head"].shape == (len(cases), HEAD["decoder_channels"])
    np.testing.assert_array_equal(pre["head"], again["head"])  # the head at its seeded initialisation
    np.testing.assert_allclose(pre["final"], ft["final"], rtol=1e-5, atol=1e-6)  # the encoder did not move
    assert np.abs(pre["head"] - ft["head"]).max() > 1e-3  # the head did
