"""Style-transfer jobs: optimise one image, train a fast network, apply it; outputs in a run folder.

Each job writes under `<root>/runs/<run_id>/style/` through a staging RunFolder that is published
(without moving `runs/latest`) only when every file is in place.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from features.images import (
    list_images,
    load_image,
    side_by_side,
    to_png_bytes,
    to_tensor,
    to_uint8,
)
from features.resources import data_path
from models.generative.style import (
    Callback,
    FastTrainConfig,
    History,
    OptimiseConfig,
    PerceptualLoss,
    StyleConfig,
    TransformNet,
    TransformNetConfig,
    load_transform_net,
    optimise,
    save_transform_net,
    train_fast,
)
from models.generative.vgg import load_vgg
from models.torch_utils import pick_device, seed_everything, set_threads
from pipelines.store import RunFolder, new_run_id, write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

IMAGES = data_path("images")
DEFAULT_CONTENT = IMAGES / "content" / "chelsea.jpg"
DEFAULT_STYLE = IMAGES / "style" / "starry_night.jpg"
DEFAULT_TRAIN_IMAGES = IMAGES / "content"
TOPIC = "style"
CHECKPOINT = "transform_net.pt"


@dataclass
class StyleRunResult:
    """What a style job wrote: the published run folder, its files, loss figures and timings."""

    run_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def history_table(history: History) -> pa.Table:
    """Loss curve as a table: step (int32), total, content, style, seconds (float64)."""
    cols = ("step", "total", "content", "style", "seconds")
    table = pa.table({c: [row[c] for row in history] for c in cols})
    return table.set_column(0, "step", table.column("step").cast(pa.int32()))


def plot_loss_png(history: History, title: str) -> bytes:
    """A PNG of the total, content and style terms per step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    labels = {"total": "total L", "content": "content (before α)", "style": "style (before β)"}
    for key, label in labels.items():
        ax.plot(steps, [max(r[key], 1e-12) for r in history], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _start(root: Path, run_id: str | None, device: str) -> tuple[RunFolder, torch.device]:
    set_threads()
    folder = RunFolder(Path(root), run_id or new_run_id()).create()
    return folder, pick_device(device)


def _publish(folder: RunFolder, result: StyleRunResult, manifest: dict[str, Any]) -> None:
    manifest |= {
        "topic": TOPIC,
        "run_id": folder.run_id,
        "metrics": result.metrics,
        "timings": result.timings,
        "files": {k: str(p.relative_to(folder.staging)) for k, p in result.files.items()},
    }
    write_json_atomic({"metrics": result.metrics, "timings": result.timings},
                      folder.path(TOPIC, "timings.json"))
    result.run_dir = folder.publish(manifest, update_latest=False)
    result.files = {k: result.run_dir / p.relative_to(folder.staging)
                    for k, p in result.files.items()}


def _write_curve(folder: RunFolder, result: StyleRunResult, history: History, name: str,
                 title: str) -> None:
    result.files[f"{name}_parquet"] = folder.write_table(name, history_table(history), TOPIC)
    result.files[f"{name}_png"] = write_bytes_atomic(plot_loss_png(history, title),
                                                     folder.path(TOPIC, f"{name}.png"))


def run_optimise(content: Path = DEFAULT_CONTENT, style: Path = DEFAULT_STYLE, *,
                 root: Path = Path("."), size: int = 256,
                 loss_config: StyleConfig | None = None,
                 optimise_config: OptimiseConfig | None = None,
                 device: str = "auto", run_id: str | None = None, progress: bool = False,
                 callback: Callback | None = None) -> StyleRunResult:
    """Stylise one content image by optimising its pixels; write PNGs, loss curve and timings.

    Content and style are resized to `size` pixels on the long side. `progress` shows a tqdm
    bar with one tick per step; `callback` gets each step's loss record.
    """
    loss_config, optimise_config = loss_config or StyleConfig(), optimise_config or OptimiseConfig()
    folder, dev = _start(root, run_id, device)
    try:
        seed_everything(optimise_config.seed)
        t0 = time.perf_counter()
        c_img, s_img = load_image(content, size), load_image(style, size)
        vgg = load_vgg(dev)
        c, s = to_tensor(c_img).to(dev), to_tensor(s_img).to(dev)
        loss = PerceptualLoss(vgg, loss_config, s)
        _sync(dev)
        t1 = time.perf_counter()
        x, history = optimise(loss, c, optimise_config, callback, progress=progress)
        _sync(dev)
        t2 = time.perf_counter()
        result = StyleRunResult(folder.final)
        result.metrics = {f"final_{k}": v for k, v in loss.evaluate(x, c).items()}
        result.metrics["initial_total"] = history[0]["total"]
        result.timings = {"setup_s": t1 - t0, "optimise_s": t2 - t1,
                          "per_step_s": (t2 - t1) / len(history), "steps": len(history),
                          "height": int(c.shape[-2]), "width": int(c.shape[-1])}
        out = folder.path(TOPIC)
        result.files["optimised"] = write_bytes_atomic(to_png_bytes(x), out / "optimised.png")
        panel = side_by_side([to_uint8(c), to_uint8(s), to_uint8(x)])
        result.files["side_by_side"] = write_bytes_atomic(to_png_bytes(panel),
                                                          out / "side_by_side.png")
        _write_curve(folder, result, history, "loss_curve",
                     f"optimisation ({optimise_config.optimizer}), {c.shape[-1]}x{c.shape[-2]}")
        _publish(folder, result, {
            "command": "optimise", "device": str(dev),
            "inputs": {"content": str(content), "style": str(style), "size": size},
            "config": {"loss": loss_config.model_dump(),
                       "optimise": optimise_config.model_dump()},
        })
    except BaseException:
        folder.discard()
        raise
    log.info("style optimise: %s (loss %.4f in %.1fs)", result.run_dir,
             result.metrics["final_total"], result.timings["optimise_s"])
    return result


def load_training_images(images: Path | Sequence[Path] | None, size: int) -> list[torch.Tensor]:
    """Training images as (1, 3, H, W) tensors whose short side is at least `size` pixels.

    Large images are shrunk so their short side is 3 x `size`, which still covers the
    default crop scales (short side 2-2.5 x the crop size).
    """
    paths = list_images(images or DEFAULT_TRAIN_IMAGES) if images is None or isinstance(
        images, (str, Path)) else [Path(p) for p in images]
    tensors = []
    for path in paths:
        img = load_image(path)
        h, w = img.shape[:2]
        if min(h, w) < size:  # upscale so a crop fits; long-side target keeps the aspect
            img = load_image(path, int(np.ceil(size * max(h, w) / min(h, w))))
        elif min(h, w) > 3 * size:  # no point keeping huge images for small crops
            img = load_image(path, int(np.ceil(3 * size * max(h, w) / min(h, w))))
        tensors.append(to_tensor(img))
    return tensors


def run_train(style: Path = DEFAULT_STYLE, images: Path | Sequence[Path] | None = None, *,
              root: Path = Path("."), loss_config: StyleConfig | None = None,
              net_config: TransformNetConfig | None = None,
              train_config: FastTrainConfig | None = None, device: str = "auto",
              run_id: str | None = None, preview: Path | None = DEFAULT_CONTENT,
              progress: bool = False, callback: Callback | None = None) -> StyleRunResult:
    """Train a fast transformation network for one style; write the checkpoint and loss curve.

    Training crops come from `images` (a folder or files; default the shipped content photos)
    with random scale and flips. The style is resized to `train_config.style_size` (default the
    crop size) on its long side.
    `preview` (if given) is stylised at the style size as a sample. `progress` shows one tqdm
    bar over the steps; `callback` gets each step's loss record.
    """
    loss_config, net_config = loss_config or StyleConfig(), net_config or TransformNetConfig()
    train_config = train_config or FastTrainConfig()
    folder, dev = _start(root, run_id, device)
    try:
        seed_everything(train_config.seed)
        t0 = time.perf_counter()
        train_images = load_training_images(images, train_config.crop_size)
        style_size = train_config.style_size or train_config.crop_size
        s = to_tensor(load_image(style, style_size)).to(dev)
        loss = PerceptualLoss(load_vgg(dev), loss_config, s)
        net = TransformNet(net_config).to(dev)
        t1 = time.perf_counter()
        history = train_fast(net, loss, train_images, train_config, callback,
                             progress=progress)
        _sync(dev)
        t2 = time.perf_counter()
        out = folder.path(TOPIC)
        result = StyleRunResult(folder.final)
        result.files["checkpoint"] = save_transform_net(
            out / CHECKPOINT, net, style_config=loss_config, train_config=train_config,
            style_image=s, style_name=Path(style).name, step=len(history))
        tail = history[-min(len(history), 20):]
        result.metrics = {"final_total_mean20": float(np.mean([r["total"] for r in tail])),
                          "initial_total": history[0]["total"], "n_images": len(train_images)}
        result.timings = {"setup_s": t1 - t0, "train_s": t2 - t1,
                          "per_step_s": (t2 - t1) / len(history), "steps": len(history)}
        if preview is not None:
            c = to_tensor(load_image(preview, style_size)).to(dev)
            y = net.stylise(c)
            result.metrics |= {f"preview_{k}": v for k, v in loss.evaluate(y, c).items()}
            result.files["preview"] = write_bytes_atomic(
                to_png_bytes(side_by_side([to_uint8(c), to_uint8(s), to_uint8(y)])),
                out / "preview.png")
        _write_curve(folder, result, history, "train_loss",
                     f"fast network training, {train_config.crop_size}px crops")
        _publish(folder, result, {
            "command": "train", "device": str(dev),
            "inputs": {"style": str(style), "images": str(images or DEFAULT_TRAIN_IMAGES)},
            "config": {"loss": loss_config.model_dump(), "net": net_config.model_dump(),
                       "train": train_config.model_dump()},
        })
    except BaseException:
        folder.discard()
        raise
    log.info("style train: %s (checkpoint %s)", result.run_dir, result.files["checkpoint"])
    return result


def expand_images(items: Sequence[Path]) -> list[Path]:
    """Files stay, folders become their image files; an empty list is an error."""
    paths: list[Path] = []
    for item in map(Path, items):
        paths.extend(list_images(item) if item.is_dir() else [item])
    if not paths:
        raise ValueError("no images given; pass one or more image files or folders")
    return paths


def run_apply(model: Path, images: Sequence[Path] = (DEFAULT_CONTENT,), *,
              root: Path = Path("."), size: int | None = 512, device: str = "auto",
              run_id: str | None = None) -> StyleRunResult:
    """Stylise each image with a trained network in one forward pass; write PNGs and timings.

    Images are resized to `size` on the long side (None keeps their size).
    """
    folder, dev = _start(root, run_id, device)
    try:
        t0 = time.perf_counter()
        net, meta = load_transform_net(Path(model), dev)
        paths = expand_images(images)
        t1 = time.perf_counter()
        rows: dict[str, list[Any]] = {"image": [], "output": [], "height": [], "width": [],
                                      "seconds": []}
        result = StyleRunResult(folder.final)
        used: set[str] = set()
        for path in paths:
            x = to_tensor(load_image(path, size)).to(dev)
            _sync(dev)
            start = time.perf_counter()
            y = net.stylise(x)
            _sync(dev)
            seconds = time.perf_counter() - start
            name = path.stem
            while name in used:  # two inputs with the same stem from different folders
                name += "_"
            used.add(name)
            target = write_bytes_atomic(to_png_bytes(y), folder.path(TOPIC, f"{name}.png"))
            result.files[name] = target
            for key, value in zip(rows, (str(path), target.name, x.shape[-2], x.shape[-1],
                                         seconds), strict=True):
                rows[key].append(value)
        result.files["timings_parquet"] = folder.write_table("apply_timings", pa.table(rows),
                                                             TOPIC)
        result.timings = {"load_s": t1 - t0, "images": len(paths),
                          "mean_per_image_s": float(np.mean(rows["seconds"]))}
        _publish(folder, result, {
            "command": "apply", "device": str(dev),
            "inputs": {"model": str(model), "images": [str(p) for p in paths], "size": size},
            "style_name": meta["style_name"],
        })
    except BaseException:
        folder.discard()
        raise
    log.info("style apply: %d images -> %s", len(paths), result.run_dir)
    return result
