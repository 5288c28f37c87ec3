"""Generative training pipeline: MNIST reader and split, config loading, outputs, resume rule."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from features.errors import ConfigError, DataError
from features.mnist import MNIST_DIR, load_mnist, read_idx, split_indices, two_moons
from pipelines.addons import generative
from pipelines.addons.generative import (
    RESUME_CHECKPOINT,
    image_grid,
    load_config,
    load_data,
    load_trained,
    make_config,
    train_model,
    work_dir,
)
from tests.conftest import cuda_devices

TINY: dict[str, dict[str, Any]] = {
    "vae": {"epochs": 2, "max_train": 96, "max_val": 32, "batch_size": 32, "log_every": 2,
            "hidden_sizes": [32], "latent_size": 4, "n_samples": 8},
    "realnvp": {"epochs": 2, "max_train": 64, "max_val": 32, "batch_size": 32, "log_every": 2,
                "n_couplings": 2, "hidden_size": 16, "n_hidden": 1, "n_samples": 8},
    "gan": {"epochs": 2, "max_train": 64, "max_val": 32, "batch_size": 32, "log_every": 1,
            "width": 4, "latent_size": 8, "n_samples": 8, "quality_samples": 20},
}
QUALITY = {"vae": "val_loss", "realnvp": "val_bpd", "gan": "val_confident_share"}
MOONS = {"dataset": "moons", "moons_n": 200, "epochs": 2, "batch_size": 50, "n_couplings": 2,
         "hidden_size": 16, "n_samples": 50, "log_every": 1}


# --- MNIST reader, split and toy data --------------------------------------------------------

def test_shipped_mnist_reads_as_10k_labelled_digits() -> None:
    images, labels = load_mnist()
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and set(labels.tolist()) == set(range(10))
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the t10k file's well-known first labels
    assert (MNIST_DIR / "README.md").read_text().count("CC BY-SA 3.0") >= 1


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_round_trips_plain_and_gzip(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(array))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), array)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), array)


def test_read_idx_names_the_file_when_bad(tmp_path: Path) -> None:
    (tmp_path / "bad.idx").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="bad.idx: not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(_idx_bytes(np.zeros((2, 3), np.uint8))[:-2])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    with pytest.raises(DataError, match="no such IDX file"):
        read_idx(tmp_path / "missing.idx")


def test_split_is_seeded_disjoint_and_complete() -> None:
    a = split_indices(100, val_fraction=0.2, seed=3)
    b = split_indices(100, val_fraction=0.2, seed=3)
    c = split_indices(100, val_fraction=0.2, seed=4)
    assert np.array_equal(a.train, b.train) and not np.array_equal(a.validation, c.validation)
    assert len(a.validation) == 20 and len(np.intersect1d(a.train, a.validation)) == 0
    assert np.array_equal(np.sort(np.concatenate([a.train, a.validation])), np.arange(100))
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, val_fraction=1.0, seed=0)


def test_two_moons_shape_and_determinism() -> None:
    a, b = two_moons(101, noise=0.0, seed=1), two_moons(101, noise=0.0, seed=1)
    assert a.shape == (101, 2) and a.dtype == np.float32 and np.array_equal(a, b)
    # noise-free points lie on unit circles around (0, 0) and (1, 0.5)
    r_upper = np.hypot(a[:, 0], a[:, 1])
    r_lower = np.hypot(a[:, 0] - 1, a[:, 1] - 0.5)
    assert np.allclose(np.minimum(abs(r_upper - 1), abs(r_lower - 1)), 0, atol=1e-5)


def test_load_data_shapes_and_limits() -> None:
    train, val = load_data(make_config("vae", {"max_train": 10, "max_val": 5}))
    assert train.shape == (10, 1, 28, 28) and val.shape == (5, 1, 28, 28)
    assert 0 <= float(train.min()) and float(train.max()) <= 1
    train, val = load_data(make_config("realnvp", MOONS))
    assert train.shape == (160, 2) and val.shape == (40, 2)
    (images, labels), (val_images, val_labels) = load_data(
        make_config("gan", {"max_train": 10, "max_val": 5}))  # conditional: labelled pairs
    assert images.shape == (10, 1, 28, 28) and labels.shape == (10,)
    assert val_images.shape == (5, 1, 28, 28) and val_labels.dtype == torch.int64
    plain, _ = load_data(make_config("gan", {"max_train": 10, "conditional": False}))
    assert torch.equal(plain, images)


# --- configs ---------------------------------------------------------------------------------

def test_load_config_flat_or_under_the_model_table(tmp_path: Path) -> None:
    flat = tmp_path / "flat.toml"
    flat.write_text("epochs = 3\nhidden_sizes = [64, 32]\n")
    table = tmp_path / "table.toml"
    table.write_text("[vae]\nepochs = 4\n\n[gan]\nwidth = 8\n")
    assert load_config("vae", flat).hidden_sizes == (64, 32)
    assert load_config("vae", table).epochs == 4
    assert load_config("gan", table).width == 8
    assert load_config("realnvp", table) == make_config("realnvp")  # no [realnvp]: defaults
    assert load_config("vae", flat, {"epochs": 7, "seed": None}).epochs == 7
    assert load_config("gan").epochs == 12  # no file: the real-run defaults


def test_unknown_key_is_rejected_with_file_and_valid_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 3\nlatent_sise = 8\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key\(s\) \['latent_sise'\].*"
                                          r"latent_size"):
        load_config("vae", bad)


def test_bad_values_and_files_raise_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = -1\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_config("gan", bad)
    bad.write_text("epochs = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config("gan", bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("gan", tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="unknown model 'style'"):
        make_config("style")


# --- training runs ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["vae", "realnvp", "gan"])
def test_train_model_publishes_checkpoint_metrics_and_images(model: str, tmp_path: Path) -> None:
    cfg = make_config(model, TINY[model])
    res = train_model(model, cfg, device="cpu", root=tmp_path, run_id=f"r-{model}")
    folder = tmp_path / "runs" / f"r-{model}" / "generative" / model
    assert res.folder == folder and res.resumed_from_epoch == 0
    expected = {"checkpoint.pt", "best.pt", "metrics.parquet", "steps.parquet", "samples.png"}
    if model == "vae":
        expected.add("reconstructions.png")
    assert {p.name for p in folder.iterdir()} == expected
    metrics = pq.read_table(folder / "metrics.parquet").to_pylist()
    assert [row["epoch"] for row in metrics] == [1.0, 2.0]
    assert {"train_loss", "val_loss", "examples_per_s", "train_cpu_seconds"} <= set(metrics[0])
    metric = QUALITY[model]
    assert all(np.isfinite(row[metric]) for row in metrics)  # the quality metric every epoch
    png = Image.open(io.BytesIO((folder / "samples.png").read_bytes()))
    assert png.format == "PNG" and png.size[0] > 28
    manifest = json.loads((tmp_path / "runs" / f"r-{model}" / "manifest.json").read_text())
    assert manifest["model"] == model and manifest["config_hash"] == cfg.config_hash()
    assert manifest["quality"]["metric"] == metric == res.quality["metric"]
    assert manifest["quality"]["last"] == metrics[-1][metric]
    assert not (work_dir(tmp_path, model) / RESUME_CHECKPOINT).exists()  # finished: no resume
    loaded = load_trained(res.checkpoint)  # the checkpoint alone rebuilds the model
    assert loaded.config == cfg
    assert loaded.sample(2).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_best_checkpoint_is_the_best_epoch_by_the_quality_metric(model: str,
                                                                  tmp_path: Path) -> None:
    cfg = make_config(model, {**TINY[model], "epochs": 3})
    res = train_model(model, cfg, device="cpu", root=tmp_path)
    metric, mode = res.quality["metric"], res.quality["mode"]
    values = [row[metric] for row in res.epoch_rows]
    best = (min if mode == "min" else max)(values)
    assert res.quality["best"] == best and values[res.quality["best_epoch"] - 1] == best
    assert values.index(best) + 1 == res.quality["best_epoch"]  # first epoch to reach it
    assert res.best_checkpoint is not None
    ckpt = torch.load(res.best_checkpoint, weights_only=True)
    assert ckpt["fit"]["epoch"] == res.quality["best_epoch"] and ckpt["model"] == model
    assert load_trained(res.best_checkpoint).config == cfg  # the best loads like the last
    assert not (work_dir(tmp_path, model) / "best.pt").exists()  # published, then cleaned up


def test_gan_step_log_carries_both_gradient_norms(tmp_path: Path) -> None:
    res = train_model("gan", make_config("gan", TINY["gan"]), device="cpu", root=tmp_path)
    steps = pq.read_table(res.folder / "steps.parquet").to_pylist()
    assert len(steps) == 4  # 64 rows / batch 32 = 2 steps per epoch, logged every step
    assert all(row["g_grad_saturating"] > 0 and row["g_grad_non_saturating"] > 0 for row in steps)
    assert all(0 <= row["d_accuracy_eval"] <= 1 for row in steps)


def test_moons_run_reports_nll_and_a_scatter_plot(tmp_path: Path) -> None:
    res = train_model("realnvp", make_config("realnvp", MOONS), device="cpu", root=tmp_path)
    assert "val_nll" in res.final and np.isfinite(res.final["val_nll"])
    assert Image.open(res.images["samples"]).format == "PNG"


class Killed(Exception):
    """Stands in for a crash (SIGKILL, pre-empted GPU node) between epochs."""


def test_rerun_resumes_after_the_last_finished_epoch(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config("vae", {**TINY["vae"], "epochs": 3})
    unbroken = train_model("vae", cfg, device="cpu", root=tmp_path / "a")

    real_save = generative.save_checkpoint
    saves = []

    def save_then_die(path: Path, payload: dict[str, Any]) -> Path:
        real_save(path, payload)
        if path.name == RESUME_CHECKPOINT:
            saves.append(path)
        if len(saves) == 2:  # two epochs done, then the worker dies
            raise Killed
        return path

    monkeypatch.setattr(generative, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_model("vae", cfg.model_copy(update={"epochs": 5}), device="cpu",
                    root=tmp_path / "b")
    monkeypatch.undo()
    assert (work_dir(tmp_path / "b", "vae") / RESUME_CHECKPOINT).is_file()
    assert not list((tmp_path / "b" / "runs").glob("2*"))  # nothing published

    # Resuming may change the epoch count (and logging), not the training itself.
    resumed = train_model("vae", cfg.model_copy(update={"epochs": 3, "log_every": 1}),
                          device="cpu", root=tmp_path / "b")
    assert resumed.resumed_from_epoch == 2
    assert [r["epoch"] for r in resumed.epoch_rows] == [1.0, 2.0, 3.0]
    for a, b in zip(unbroken.epoch_rows, resumed.epoch_rows, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)  # same as never stopped


def test_rerun_with_another_config_starts_afresh(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config("gan", TINY["gan"])
    monkeypatch.setattr(generative, "_publish", lambda *a, **k: (_ for _ in ()).throw(Killed))
    with pytest.raises(Killed):
        train_model("gan", cfg, device="cpu", root=tmp_path)
    monkeypatch.undo()
    other = cfg.model_copy(update={"seed": 1})
    res = train_model("gan", other, device="cpu", root=tmp_path)
    assert res.resumed_from_epoch == 0
    finished = train_model("gan", cfg, device="cpu", root=tmp_path)
    assert finished.resumed_from_epoch == 0  # the crashed run's checkpoint was replaced


def test_train_model_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a GANConfig"):
        train_model("gan", make_config("vae"), root=tmp_path)
    with pytest.raises(ValueError, match="device"):
        train_model("gan", make_config("gan", TINY["gan"]), device="tpu", root=tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["vae", "realnvp", "gan"])
def test_train_model_on_cuda(model: str, tmp_path: Path) -> None:
    assert "cuda" in cuda_devices()
    res = train_model(model, make_config(model, TINY[model]), device="cuda", root=tmp_path)
    assert res.quality["best_epoch"] >= 1
    assert json.loads((res.folder.parents[1] / "manifest.json").read_text())["device"] == "cuda"
    assert load_trained(res.checkpoint, "cpu").sample(2).shape == (2, 1, 28, 28)


def test_image_grid_tiles_with_padding() -> None:
    images = np.stack([np.full((1, 2, 2), v, np.float32) for v in (0.0, 1.0, 0.5)])
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1) and grid.dtype == np.uint8
    assert grid[1, 1] == 0 and grid[1, 4] == 255 and grid[4, 1] == 128
