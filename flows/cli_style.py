"""`recsys style ...`: neural style transfer commands (optimise, train, apply) as Prefect flows."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from features.resources import data_path
from flows.cli_common import friendly_errors

app = typer.Typer(
    help="Neural style transfer: per-image optimisation (Gatys) or a fast network for one style.",
    no_args_is_help=True,
)

Device = Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")]
Output = Annotated[Path, typer.Option(help="Output root; results go to OUTPUT/runs/<id>/style/.")]
RunId = Annotated[str | None, typer.Option(help="Run id (default: a new time-stamped id).")]
ContentW = Annotated[float, typer.Option(help="alpha: weight of the content loss.")]
StyleW = Annotated[float, typer.Option(help="beta: weight of the Gram-matrix style loss.")]
DEFAULT_IMAGES = data_path("images")


def _prepare() -> None:
    # library loggers (resize/convert notes, loss every log_every steps) show up in the console
    # and in Prefect's run logs; the variable must be set before prefect is imported
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "features,models,pipelines")
    for name in ("features", "models", "pipelines"):
        logging.getLogger(name).setLevel(logging.INFO)


def _check_file(path: Path, what: str) -> None:
    # fail before the Prefect engine starts, with the option to fix
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; check --{what.split()[0]}")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; pass one image file")
    from features.images import load_image

    load_image(path, 64)  # a DataError naming the file if it cannot be decoded


def _echo_result(result: object) -> None:
    from pipelines.addons.style import StyleRunResult

    assert isinstance(result, StyleRunResult)
    typer.echo(f"run folder: {result.run_dir}")
    for name, value in {**result.metrics, **result.timings}.items():
        typer.echo(f"  {name}: {value:.6g}")
    for name, path in result.files.items():
        typer.echo(f"  {name}: {path}")


@app.command()
@friendly_errors
def optimise(
    content: Annotated[Path, typer.Option(help="Content photo.")] = DEFAULT_IMAGES
    / "content" / "chelsea.jpg",
    style: Annotated[Path, typer.Option(help="Style image (a painting).")] = DEFAULT_IMAGES
    / "style" / "starry_night.jpg",
    size: Annotated[int, typer.Option(help="Long side in pixels for content and style.")] = 256,
    steps: Annotated[int, typer.Option(help="Loss evaluations (L-BFGS iterations).")] = 200,
    optimizer: Annotated[str, typer.Option(help="lbfgs or adam.")] = "lbfgs",
    init: Annotated[str, typer.Option(help="Start from the content image or noise.")] = "content",
    learning_rate: Annotated[float | None, typer.Option(
        help="Step size (default 1.0 for lbfgs, 0.02 for adam).")] = None,
    content_weight: ContentW = 1.0,
    style_weight: StyleW = 10.0,
    seed: Annotated[int, typer.Option(help="Seed (noise start).")] = 0,
    device: Device = "auto",
    output: Output = Path("."),
    run_id: RunId = None,
) -> None:
    """Stylise one content image by optimising its pixels (writes PNGs, loss curve, timings)."""
    _check_file(content, "content image")
    _check_file(style, "style image")
    _prepare()
    from flows.style import run_tagged, style_optimise
    from models.generative.style import OptimiseConfig, StyleConfig

    loss = StyleConfig(content_weight=content_weight, style_weight=style_weight)
    opt = OptimiseConfig(steps=steps, optimizer=optimizer, init=init,  # type: ignore[arg-type]
                         learning_rate=learning_rate, seed=seed)
    _echo_result(run_tagged(style_optimise, content=content, style=style, root=output, size=size,
                            loss_config=loss, optimise_config=opt, device=device, run_id=run_id))


@app.command()
@friendly_errors
def train(
    style: Annotated[Path, typer.Option(help="Style image the network learns.")] = DEFAULT_IMAGES
    / "style" / "starry_night.jpg",
    images: Annotated[Path | None, typer.Option(
        help="Folder of training photos (default: the shipped content images).")] = None,
    size: Annotated[int, typer.Option(help="Side of the square training crops.")] = 128,
    style_size: Annotated[int, typer.Option(
        help="Long side of the style image in px: the scale of the strokes.")] = 256,
    steps: Annotated[int, typer.Option(help="Training steps (batches).")] = 3000,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = 2,
    learning_rate: Annotated[float, typer.Option(help="Adam step size (peak).")] = 1e-3,
    lr_schedule: Annotated[str, typer.Option(
        help="cosine (decay to 1% over the steps) or constant.")] = "cosine",
    channels: Annotated[int, typer.Option(help="Network width (first layer).")] = 16,
    n_residual: Annotated[int, typer.Option(help="Residual blocks.")] = 5,
    content_weight: ContentW = 1.0,
    style_weight: StyleW = 10.0,
    seed: Annotated[int, typer.Option(help="Seed for weights and crops.")] = 0,
    device: Device = "auto",
    output: Output = Path("."),
    run_id: RunId = None,
) -> None:
    """Train a fast feed-forward network for one style (writes the checkpoint and loss curve)."""
    _check_file(style, "style image")
    if images is not None and not images.is_dir():
        raise FileNotFoundError(f"--images {images} is not a folder of training photos")
    _prepare()
    from flows.style import run_tagged, style_train
    from models.generative.style import FastTrainConfig, StyleConfig, TransformNetConfig

    _echo_result(run_tagged(
        style_train, style=style, images=images, root=output,
        loss_config=StyleConfig(content_weight=content_weight, style_weight=style_weight),
        net_config=TransformNetConfig(channels=channels, n_residual=n_residual),
        train_config=FastTrainConfig(steps=steps, batch_size=batch_size, crop_size=size,
                                     style_size=style_size, learning_rate=learning_rate,
                                     lr_schedule=lr_schedule,  # type: ignore[arg-type]
                                     seed=seed),
        device=device, run_id=run_id))


@app.command()
@friendly_errors
def apply(
    model: Annotated[Path, typer.Option(help="Checkpoint written by `recsys style train` "
                                        "(runs/<id>/style/transform_net.pt).")],
    images: Annotated[list[Path] | None, typer.Argument(
        help="Images or folders to stylise (default: the shipped cat photo).")] = None,
    size: Annotated[int, typer.Option(help="Long side in pixels; 0 keeps the image size.")] = 512,
    device: Device = "auto",
    output: Output = Path("."),
    run_id: RunId = None,
) -> None:
    """Stylise images with a trained fast network: one forward pass per image."""
    if not model.is_file():
        raise FileNotFoundError(f"checkpoint {model} does not exist; train one with "
                                "`recsys style train` and pass its transform_net.pt")
    _prepare()
    from flows.style import run_tagged, style_apply

    _echo_result(run_tagged(style_apply, model=model, images=images, root=output,
                            size=size or None, device=device, run_id=run_id))
