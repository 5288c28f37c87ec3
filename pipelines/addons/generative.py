"""Train one generative model (VAE, RealNVP, GAN) and write its checkpoint, metrics and images."""

from __future__ import annotations

import io
import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pydantic import ValidationError

from features.errors import ConfigError
from features.mnist import load_mnist, split_indices, two_moons
from models.generative.gan import GANConfig, GANTrainer
from models.generative.realnvp import RealNVPConfig, RealNVPTrainer
from models.generative.training import (
    Batch,
    FitState,
    GenerativeTrainer,
    TrainConfig,
    checkpoint_payload,
    fit,
    size_of,
)
from models.generative.vae import VAEConfig, VAETrainer
from models.torch_utils import (
    load_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
    set_threads,
)
from pipelines.store import (
    RunFolder,
    new_run_id,
    output_lock,
    write_bytes_atomic,
    write_parquet_atomic,
)

log = logging.getLogger(__name__)

TOPIC = "generative"
CHECKPOINT = "checkpoint.pt"
BEST_CHECKPOINT = "best.pt"
RESUME_CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class ModelSpec:
    """How to configure and build one model's trainer."""

    config_cls: type[TrainConfig]
    trainer: Callable[[Any, torch.device], GenerativeTrainer]


MODELS: dict[str, ModelSpec] = {
    "vae": ModelSpec(VAEConfig, VAETrainer),
    "realnvp": ModelSpec(RealNVPConfig, RealNVPTrainer),
    "gan": ModelSpec(GANConfig, GANTrainer),
}


def _spec(model_name: str) -> ModelSpec:
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[model_name]


def make_config(model_name: str, values: Mapping[str, Any] | None = None,
                *, source: str = "config") -> TrainConfig:
    """Validate `values` into the model's config; unknown keys and bad values raise ConfigError."""
    cls = _spec(model_name).config_cls
    values = dict(values or {})
    if unknown := sorted(set(values) - set(cls.model_fields)):
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for model {model_name!r}; valid keys are "
            f"{sorted(cls.model_fields)}"
        )
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: invalid {model_name} config: {problems}") from None


def load_config(model_name: str, path: Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The model's config from a TOML file (flat keys, or a `[<model>]` table) plus overrides.

    No file gives the real-run defaults. Overrides (e.g. `--epochs` on the command line) win.
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing TOML file")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        if any(isinstance(values.get(name), dict) for name in MODELS):
            values = values.get(model_name, {})  # sectioned file: [vae], [realnvp], [gan]
        source = str(path)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return make_config(model_name, values, source=source)


def load_data(config: TrainConfig) -> tuple[Any, Any]:
    """Train and validation data on the CPU, split with the config's seed.

    MNIST: (N, 1, 28, 28) grey levels in [0, 1]; for a conditional GAN, (images, labels (N,))
    pairs. Two moons (RealNVP only): (N, 2) points.
    """
    labels: torch.Tensor | None = None
    if isinstance(config, RealNVPConfig) and config.dataset == "moons":
        data = torch.from_numpy(two_moons(config.moons_n, noise=config.moons_noise,
                                          seed=config.seed))
    else:
        images, digit_labels = load_mnist()
        data = torch.from_numpy(images).float().div_(255).unsqueeze(1)  # (N, 1, 28, 28)
        if isinstance(config, GANConfig) and config.conditional:
            labels = torch.from_numpy(digit_labels)
    split = split_indices(len(data), val_fraction=config.val_fraction, seed=config.seed)
    tr, va = torch.from_numpy(split.train), torch.from_numpy(split.validation)
    train = data[tr][: config.max_train]
    val = data[va][: config.max_val]
    if labels is None:
        return train, val
    return (train, labels[tr][: config.max_train]), (val, labels[va][: config.max_val])


def to_device(data: Batch, device: torch.device) -> Batch:
    """A tensor or an (images, labels) pair moved to `device`."""
    if isinstance(data, torch.Tensor):
        return data.to(device)
    return (data[0].to(device), data[1].to(device))


def images_of(data: Batch) -> torch.Tensor:
    """The images (or points) of a tensor or an (images, labels) pair."""
    return data if isinstance(data, torch.Tensor) else data[0]


@dataclass(frozen=True)
class EpochReport:
    """What a caller (the Prefect flow) hears after every epoch: progress and the quality metric."""

    model: str
    epoch: int
    epochs: int
    row: dict[str, float]
    quality_metric: str
    best_epoch: int
    best_value: float | None


@dataclass
class TrainResult:
    """Where one training run's outputs landed and how it ended."""

    model: str
    run_id: str
    folder: Path
    checkpoint: Path
    metrics: Path
    images: dict[str, Path]
    final: dict[str, float]
    resumed_from_epoch: int
    epoch_rows: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    """The quality metric's name, direction, description, best epoch and value, last value."""


def work_dir(root: Path, model_name: str) -> Path:
    """The stable folder holding a model's resume checkpoint: `runs/.work/generative/<model>/`."""
    return Path(root) / "runs" / ".work" / TOPIC / model_name


def train_model(model_name: str, config: TrainConfig, *, device: str | torch.device = "auto",
                root: Path = Path("."), run_id: str | None = None,
                show_progress: bool = False,
                on_epoch: Callable[[EpochReport], None] | None = None) -> TrainResult:
    """Train `model_name` and publish `runs/<run_id>/generative/<model>/` under `root`.

    After every epoch the model's quality metric (VAE: validation negative ELBO; RealNVP:
    bits/dim, or NLL on moons; GAN: the shipped classifier's confident-digit share) lands in
    the epoch row, the best epoch's checkpoint is kept as `best.pt` besides the last one
    (`checkpoint.pt`), and `on_epoch` (if given) hears an `EpochReport`.

    Resume rule: after every epoch the full training state goes to
    `runs/.work/generative/<model>/last.pt`. A later call for the same model whose config
    matches on every field but `epochs`, `log_every` and `n_samples` (same `resume_hash`)
    continues after the last finished epoch; any other config starts from scratch. Once the
    run is published the resume checkpoint is deleted.
    """
    spec = _spec(model_name)
    if not isinstance(config, spec.config_cls):
        raise ValueError(f"{model_name} needs a {spec.config_cls.__name__}, got "
                         f"{type(config).__name__}")
    set_threads()
    dev = device if isinstance(device, torch.device) else pick_device(device)
    wd = work_dir(root, model_name)
    with output_lock(wd):
        seed_everything(config.seed)
        trainer = spec.trainer(config, dev)
        state = _resume(wd / RESUME_CHECKPOINT, model_name, config, trainer, dev)
        resumed_from = state.epoch if state else 0
        train, val = (to_device(t, dev) for t in load_data(config))
        log.info("%s: %d train / %d validation rows on %s, config %s; quality metric %s (%s)",
                 model_name, size_of(train), size_of(val), dev, config.config_hash(),
                 trainer.quality.metric, trainer.quality.description)
        if state is None:
            (wd / BEST_CHECKPOINT).unlink(missing_ok=True)  # a fresh run: no stale best

        def keep(st: FitState, is_best: bool) -> None:
            payload = _payload(model_name, trainer, st)
            if is_best:
                save_checkpoint(wd / BEST_CHECKPOINT, payload)
            save_checkpoint(wd / RESUME_CHECKPOINT, payload)
            if on_epoch is not None:
                on_epoch(EpochReport(model_name, st.epoch, config.epochs, st.epoch_rows[-1],
                                     trainer.quality.metric, st.best_epoch, st.best_value))

        state = fit(trainer, train, val, state=state, on_epoch_end=keep,
                    show_progress=show_progress, label=model_name)
        result = _publish(model_name, trainer, state, images_of(val), Path(root),
                          run_id or new_run_id(), dev, resumed_from, wd / BEST_CHECKPOINT)
        (wd / RESUME_CHECKPOINT).unlink(missing_ok=True)
        (wd / BEST_CHECKPOINT).unlink(missing_ok=True)
    return result


def _payload(model_name: str, trainer: GenerativeTrainer, state: FitState) -> dict[str, Any]:
    payload = checkpoint_payload(model_name, trainer, state)
    # Global RNG state too, so a resumed run draws the same noise as an unbroken one (on CPU).
    payload["rng"] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        payload["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return payload


def _resume(path: Path, model_name: str, config: TrainConfig, trainer: GenerativeTrainer,
            device: torch.device) -> FitState | None:
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path, device)
    if ckpt.get("model") != model_name or ckpt.get("resume_hash") != config.resume_hash():
        log.warning("%s: resume checkpoint %s was made with another config; starting afresh",
                    model_name, path)
        return None
    trainer.load_state_dict(ckpt["state"])
    rng = ckpt.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    state = FitState.from_dict(ckpt["fit"])
    log.info("%s: resuming from %s after epoch %d", model_name, path, state.epoch)
    return state


def _publish(model_name: str, trainer: GenerativeTrainer, state: FitState, val: torch.Tensor,
             root: Path, run_id: str, device: torch.device, resumed_from: int,
             best: Path) -> TrainResult:
    run = RunFolder(root, run_id).create()
    sub = (TOPIC, model_name)
    save_checkpoint(run.path(*sub, CHECKPOINT), _payload(model_name, trainer, state))
    has_best = best.is_file()
    if has_best:
        write_bytes_atomic(best.read_bytes(), run.path(*sub, BEST_CHECKPOINT))
    write_parquet_atomic(_rows_table(state.epoch_rows), run.path(*sub, "metrics.parquet"))
    write_parquet_atomic(_rows_table(state.step_rows), run.path(*sub, "steps.parquet"))
    images: dict[str, bytes] = {}
    samples = trainer.sample(trainer.config.n_samples)
    if samples.dim() == 2:  # 2-D toy data: scatter of the samples over the validation points
        images["samples"] = scatter_png(val.cpu().numpy(), samples.numpy())
    else:
        conditional = isinstance(trainer.config, GANConfig) and trainer.config.conditional
        images["samples"] = png_bytes(image_grid(samples.numpy(), nrow=10 if conditional else 8))
    if isinstance(trainer, VAETrainer):
        width = min(8, len(val))
        originals = val[: min(32, len(val)) // width * width].cpu()
        recons = trainer.reconstruct(originals)
        # Rows alternate: `width` validation digits, then their reconstructions underneath.
        rows = [t for i in range(0, len(originals), width)
                for t in (originals[i:i + width], recons[i:i + width])]
        images["reconstructions"] = png_bytes(image_grid(torch.cat(rows).numpy(), nrow=width))
    for name, data in images.items():
        write_bytes_atomic(data, run.path(*sub, f"{name}.png"))
    final = state.epoch_rows[-1] if state.epoch_rows else {}
    q = trainer.quality
    quality = {"metric": q.metric, "mode": q.mode, "description": q.description,
               "best_epoch": state.best_epoch, "best": state.best_value,
               "last": final.get(q.metric)}
    manifest = {"kind": TOPIC, "model": model_name, "run_id": run_id, "device": str(device),
                "config": trainer.config.model_dump(mode="json"),
                "config_hash": trainer.config.config_hash(), "epochs": state.epoch,
                "steps": state.step, "resumed_from_epoch": resumed_from, "final": final,
                "quality": quality,
                "files": sorted(p.relative_to(run.staging).as_posix()
                                for p in run.path(*sub).iterdir())}
    folder = run.publish(manifest, update_latest=False).joinpath(*sub)
    log.info("%s: published %s", model_name, folder)
    return TrainResult(model_name, run_id, folder, folder / CHECKPOINT, folder / "metrics.parquet",
                       {k: folder / f"{k}.png" for k in images}, final, resumed_from,
                       list(state.epoch_rows), folder / BEST_CHECKPOINT if has_best else None,
                       quality)


def load_trained(path: Path, device: str | torch.device = "cpu") -> GenerativeTrainer:
    """Rebuild any trained model from its checkpoint alone (model name and config inside)."""
    ckpt = load_checkpoint(path, device)
    model_name = ckpt.get("model")
    if model_name not in MODELS:
        raise ValueError(f"{path}: not a generative checkpoint (model {model_name!r})")
    spec = MODELS[model_name]
    trainer = spec.trainer(spec.config_cls.model_validate(ckpt["config"]), torch.device(device))
    trainer.load_state_dict(ckpt["state"])
    return trainer


def _rows_table(rows: list[dict[str, float]]) -> pa.Table:
    if not rows:
        return pa.table({"epoch": pa.array([], pa.float64()), "step": pa.array([], pa.float64())})
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.table({k: pa.array([row.get(k) for row in rows], pa.float64()) for k in keys})
    return table.set_column(0, keys[0], table.column(0))


def image_grid(images: np.ndarray, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """Tile (N, 1, H, W) images in [0, 1] into one uint8 (rows*(H+pad)+pad, ...) picture."""
    n, _, h, w = images.shape
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + c * (w + pad): pad + c * (w + pad) + w] = images[i, 0]
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def png_bytes(picture: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as a grey PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def scatter_png(data: np.ndarray, samples: np.ndarray) -> bytes:
    """A PNG scatter plot of 2-D model samples over held-out data points."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.add_subplot()
    ax.scatter(data[:, 0], data[:, 1], s=3, alpha=0.4, label="validation data")
    ax.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.8, label="samples")
    ax.legend(loc="upper right", fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
