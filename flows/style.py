"""Prefect flows for neural style transfer: optimise one image, train a fast network, apply it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, tags, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from flows.artifacts import markdown_image, run_name
from models.generative.style import (
    Callback,
    FastTrainConfig,
    OptimiseConfig,
    StyleConfig,
    TransformNetConfig,
)
from pipelines.addons import style as jobs
from pipelines.addons.style import StyleRunResult
from pipelines.store import new_run_id

GPU_TAGS = ("gpu",)


def _report(result: StyleRunResult, title: str, image_key: str | None) -> None:
    """Attach the figures and the picture (inlined, so the UI renders it) as artifacts."""
    rows = [{"name": k, "value": round(float(v), 6)}
            for k, v in {**result.metrics, **result.timings}.items()]
    create_table_artifact(rows, key=f"style-{title}-figures", description=f"style {title}")
    if image_key and image_key in result.files:
        path = result.files[image_key]
        create_markdown_artifact(
            f"# style {title}\n\n{markdown_image(path, image_key)}\n\n"
            f"Run folder: `{result.run_dir.absolute()}`  \nImage: `{path.absolute()}`\n",
            key=f"style-{title}-image",
        )


def _progress(what: str, steps: int) -> Callback:
    """A progress artifact for a run of `steps` steps and the callback that advances it."""
    artifact = create_progress_artifact(0.0, key=f"style-{what}-progress",
                                        description=f"style {what}: steps done")
    every = max(1, steps // 100)

    def advance(record: dict[str, float]) -> None:
        step = int(record["step"])
        if step % every == 0 or step >= steps:
            update_progress_artifact(artifact, min(100.0, 100.0 * step / steps))

    return advance


def _run_id(given: str | None) -> str:
    """The run id: the one given, else the flow run's name (see `run_name`), else a new one."""
    return given or flow_run.name or new_run_id()


@task(name="style-optimise-image", tags=list(GPU_TAGS))
def optimise_task(content: Path, style: Path, root: Path, size: int, loss_config: StyleConfig,
                  optimise_config: OptimiseConfig, device: str,
                  run_id: str | None) -> StyleRunResult:
    """Optimise the pixels of one image for content + style and write the outputs."""
    return jobs.run_optimise(content, style, root=root, size=size, loss_config=loss_config,
                             optimise_config=optimise_config, device=device, run_id=run_id,
                             progress=True,
                             callback=_progress("optimise", optimise_config.steps))


@task(name="style-train-network", tags=list(GPU_TAGS))
def train_task(style: Path, images: Path | None, root: Path, loss_config: StyleConfig,
               net_config: TransformNetConfig, train_config: FastTrainConfig, device: str,
               run_id: str | None) -> StyleRunResult:
    """Train the feed-forward network for one style and write its checkpoint."""
    return jobs.run_train(style, images, root=root, loss_config=loss_config,
                          net_config=net_config, train_config=train_config, device=device,
                          run_id=run_id, progress=True,
                          callback=_progress("train", train_config.steps))


@task(name="style-apply-network", tags=list(GPU_TAGS))
def apply_task(model: Path, images: Sequence[Path], root: Path, size: int | None, device: str,
               run_id: str | None) -> StyleRunResult:
    """Stylise images with a trained network, one forward pass each."""
    return jobs.run_apply(model, list(images), root=root, size=size, device=device,
                          run_id=run_id)


@flow(name="style-optimise", flow_run_name=run_name)
def style_optimise(content: Path = jobs.DEFAULT_CONTENT, style: Path = jobs.DEFAULT_STYLE,
                   root: Path = Path("."), size: int = 256,
                   loss_config: StyleConfig | None = None,
                   optimise_config: OptimiseConfig | None = None, device: str = "auto",
                   run_id: str | None = None) -> StyleRunResult:
    """Stylise a content image with a style image by per-image optimisation (Gatys)."""
    result = optimise_task(content, style, root, size, loss_config or StyleConfig(),
                           optimise_config or OptimiseConfig(), device, _run_id(run_id))
    _report(result, "optimise", "side_by_side")
    return result


@flow(name="style-train", flow_run_name=run_name)
def style_train(style: Path = jobs.DEFAULT_STYLE, images: Path | None = None,
                root: Path = Path("."), loss_config: StyleConfig | None = None,
                net_config: TransformNetConfig | None = None,
                train_config: FastTrainConfig | None = None, device: str = "auto",
                run_id: str | None = None) -> StyleRunResult:
    """Train a fast style network for one fixed style on crops of a folder of images."""
    result = train_task(style, images, root, loss_config or StyleConfig(),
                        net_config or TransformNetConfig(), train_config or FastTrainConfig(),
                        device, _run_id(run_id))
    _report(result, "train", "preview")
    return result


@flow(name="style-apply", flow_run_name=run_name)
def style_apply(model: Path, images: list[Path] | None = None, root: Path = Path("."),
                size: int | None = 512, device: str = "auto",
                run_id: str | None = None) -> StyleRunResult:
    """Stylise images with a trained fast network."""
    result = apply_task(model, images or [jobs.DEFAULT_CONTENT], root, size, device,
                        _run_id(run_id))
    _report(result, "apply", next(iter(result.files), None))
    return result


def run_tagged(flow_fn: object, **kwargs: object) -> StyleRunResult:
    """Call one of the flows above with the run tagged `gpu` (Prefect 3 flows take tags here)."""
    with tags(*GPU_TAGS):
        result: StyleRunResult = flow_fn(**kwargs)  # type: ignore[operator]
    return result
