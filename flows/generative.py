"""Prefect flows `train-vae`, `train-realnvp`, `train-gan`: one model per run, tagged `gpu`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, tags, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.artifacts import markdown_image, run_name
from flows.settings import configure_process
from pipelines.addons import generative
from pipelines.addons.generative import EpochReport, TrainResult
from pipelines.store import new_run_id

GPU_TAGS = ["gpu"]
"""Tags on every generative flow run and training task: route them to a GPU work pool."""


class EpochArtifacts:
    """Per-epoch Prefect artifacts while a model trains: a progress bar and the quality table."""

    def __init__(self, model: str, run_id: str) -> None:
        self.model = model
        self.run_id = run_id
        self.progress_id: UUID | None = None
        self.rows: list[dict[str, Any]] = []

    def __call__(self, report: EpochReport) -> None:
        """Move the progress artifact and publish the quality metric of every epoch so far."""
        value = report.row.get(report.quality_metric, math.nan)
        percent = 100.0 * report.epoch / max(report.epochs, 1)
        line = (f"{self.model} epoch {report.epoch}/{report.epochs}: "
                f"{report.quality_metric} = {value:.4g} (best at epoch {report.best_epoch})")
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(
                percent, key=f"train-{self.model}-progress", description=line)
        else:
            update_progress_artifact(self.progress_id, percent, description=line)
        self.rows.append({"epoch": report.epoch, report.quality_metric: value,
                          "best_epoch": report.best_epoch})
        create_table_artifact(key=f"train-{self.model}-quality", table=self.rows,
                              description=f"{self.model} {report.quality_metric} per epoch, "
                              f"run {self.run_id}")


@task(name="train-generative", tags=GPU_TAGS, cache_policy=NO_CACHE)
def train_task(model_name: str, config: Any, device: str, root: Path, run_id: str,
               show_progress: bool) -> TrainResult:
    """Train one model (resuming from its work checkpoint) and publish its run folder."""
    return generative.train_model(model_name, config, device=device, root=root, run_id=run_id,
                                  show_progress=show_progress,
                                  on_epoch=EpochArtifacts(model_name, run_id))


def outputs_markdown(result: TrainResult) -> str:
    """The outputs page: paths, the quality metric (best and last), last metrics, images."""
    q = result.quality
    best = q.get("best")
    best_txt = "n/a" if best is None else f"{best:.4g} at epoch {q.get('best_epoch')}"
    best_ckpt = f"`{result.best_checkpoint}`" if result.best_checkpoint else "n/a"
    images = "\n".join(f"### {name}\n\n{markdown_image(path, name)}\n\n`{path}`\n"
                       for name, path in result.images.items())
    final = "\n".join(f"| {k} | {v:.4g} |" for k, v in result.final.items())
    return (f"# {result.model} run {result.run_id}\n\n"
            f"Quality metric: **{q.get('metric')}** ({q.get('description')}, "
            f"{'lower' if q.get('mode') == 'min' else 'higher'} is better): best {best_txt}, "
            f"last {q.get('last', math.nan):.4g}\n\n"
            f"Checkpoint (last epoch): `{result.checkpoint}`  \nBest checkpoint: {best_ckpt}  \n"
            f"Metrics: `{result.metrics}`  \nResumed from epoch: {result.resumed_from_epoch}\n\n"
            f"| metric | last epoch |\n|---|---|\n{final}\n\n{images}")


@task(name="publish-artifacts", tags=GPU_TAGS, cache_policy=NO_CACHE)
def publish_artifacts(result: TrainResult) -> None:
    """Per-epoch metrics table and a markdown page with the checkpoints and sample images."""
    key = f"train-{result.model}"
    create_table_artifact(key=f"{key}-metrics", table=result.epoch_rows,
                          description=f"{result.model} metrics per epoch, run {result.run_id}")
    create_markdown_artifact(key=f"{key}-outputs", markdown=outputs_markdown(result),
                             description=f"{result.model} checkpoints, quality and samples")


def _train(model_name: str, config_path: Path | None, device: str, output: Path,
           run_id: str | None, overrides: dict[str, Any] | None, config: Any,
           show_progress: bool) -> dict[str, Any]:
    cfg = config or generative.load_config(model_name, config_path, overrides)
    run_id = run_id or flow_run.name or new_run_id()  # the flow run is named after the run id
    result = train_task(model_name, cfg, device, Path(output), run_id, show_progress)
    publish_artifacts(result)
    return {"model": result.model, "run_id": result.run_id, "path": str(result.folder),
            "checkpoint": str(result.checkpoint), "final": result.final,
            "resumed_from_epoch": result.resumed_from_epoch,
            "best_checkpoint": None if result.best_checkpoint is None
            else str(result.best_checkpoint), "quality": result.quality}


@flow(name="train-vae", flow_run_name=run_name, log_prints=True)
def train_vae(config_path: Path | None = None, device: str = "auto", output: Path = Path("."),
              run_id: str | None = None, overrides: dict[str, Any] | None = None,
              config: Any = None, show_progress: bool = False) -> dict[str, Any]:
    """Train the VAE on MNIST; publish checkpoint, metrics, samples and reconstructions.

    Args:
        config_path: TOML file with VAE config keys (flat or under `[vae]`); none = defaults.
        device: `auto` (CUDA when available), `cpu` or `cuda`.
        output: Output root; the run lands in `<output>/runs/<run_id>/generative/vae/`.
        run_id: Run id and flow run name; default: UTC time stamp plus a random suffix.
        overrides: Config keys that win over the file, e.g. `{"epochs": 5}`.
        config: A ready `VAEConfig` (the CLI passes the one it validated); wins over the file.
        show_progress: Draw a tqdm bar over the whole training in the worker's terminal.
    """
    return _train("vae", config_path, device, output, run_id, overrides, config, show_progress)


@flow(name="train-realnvp", flow_run_name=run_name, log_prints=True)
def train_realnvp(config_path: Path | None = None, device: str = "auto", output: Path = Path("."),
                  run_id: str | None = None, overrides: dict[str, Any] | None = None,
                  config: Any = None, show_progress: bool = False) -> dict[str, Any]:
    """Train the RealNVP flow on dequantised MNIST or two moons; publish its outputs.

    Args:
        config_path: TOML file with RealNVP config keys (flat or under `[realnvp]`).
        device: `auto` (CUDA when available), `cpu` or `cuda`.
        output: Output root; the run lands in `<output>/runs/<run_id>/generative/realnvp/`.
        run_id: Run id and flow run name; default: UTC time stamp plus a random suffix.
        overrides: Config keys that win over the file, e.g. `{"dataset": "moons"}`.
        config: A ready `RealNVPConfig`; wins over the file.
        show_progress: Draw a tqdm bar over the whole training in the worker's terminal.
    """
    return _train("realnvp", config_path, device, output, run_id, overrides, config,
                  show_progress)


@flow(name="train-gan", flow_run_name=run_name, log_prints=True)
def train_gan(config_path: Path | None = None, device: str = "auto", output: Path = Path("."),
              run_id: str | None = None, overrides: dict[str, Any] | None = None,
              config: Any = None, show_progress: bool = False) -> dict[str, Any]:
    """Train the GAN on MNIST; publish checkpoints, metrics (with gradient norms) and samples.

    Args:
        config_path: TOML file with GAN config keys (flat or under `[gan]`).
        device: `auto` (CUDA when available), `cpu` or `cuda`.
        output: Output root; the run lands in `<output>/runs/<run_id>/generative/gan/`.
        run_id: Run id and flow run name; default: UTC time stamp plus a random suffix.
        overrides: Config keys that win over the file, e.g. `{"generator_loss": "saturating"}`.
        config: A ready `GANConfig`; wins over the file.
        show_progress: Draw a tqdm bar over the whole training in the worker's terminal.
    """
    return _train("gan", config_path, device, output, run_id, overrides, config, show_progress)


FLOWS = {"vae": train_vae, "realnvp": train_realnvp, "gan": train_gan}


def run_training(model_name: str, **kwargs: Any) -> dict[str, Any]:
    """Call one training flow with its flow run tagged `gpu` (what the CLI does)."""
    configure_process()
    with tags(*GPU_TAGS):
        return FLOWS[model_name](**kwargs)
