"""Prefect flows `train-vae`, `train-realnvp`, `train-gan`: one model per run, tagged `gpu`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, tags, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.settings import configure_process
from pipelines import generative
from pipelines.generative import TrainResult

GPU_TAGS = ["gpu"]
"""Tags on every generative flow run and training task: route them to a GPU work pool."""


@task(name="train-generative", tags=GPU_TAGS, cache_policy=NO_CACHE)
def train_task(model_name: str, config: Any, device: str, root: Path, run_id: str | None,
               show_progress: bool) -> TrainResult:
    """Train one model (resuming from its work checkpoint) and publish its run folder."""
    return generative.train_model(model_name, config, device=device, root=root, run_id=run_id,
                                  show_progress=show_progress)


@task(name="publish-artifacts", tags=GPU_TAGS, cache_policy=NO_CACHE)
def publish_artifacts(result: TrainResult) -> None:
    """Per-epoch metrics table and a markdown page linking the checkpoint and sample images."""
    key = f"train-{result.model}"
    create_table_artifact(key=f"{key}-metrics", table=result.epoch_rows,
                          description=f"{result.model} metrics per epoch, run {result.run_id}")
    images = "\n".join(f"![{name}]({path.resolve().as_uri()})\n\n`{path}`\n"
                       for name, path in result.images.items())
    final = "\n".join(f"| {k} | {v:.4g} |" for k, v in result.final.items())
    create_markdown_artifact(
        key=f"{key}-outputs",
        markdown=(f"# {result.model} run {result.run_id}\n\nCheckpoint: `{result.checkpoint}`\n"
                  f"Metrics: `{result.metrics}`\n"
                  f"Resumed from epoch: {result.resumed_from_epoch}\n\n"
                  f"| metric | last epoch |\n|---|---|\n{final}\n\n{images}"),
        description=f"{result.model} checkpoint, metrics and sample images")


def _train(model_name: str, config_path: Path | None, device: str, output: Path,
           run_id: str | None, overrides: dict[str, Any] | None, config: Any,
           show_progress: bool) -> dict[str, Any]:
    for name in ("models.generative", "pipelines.generative"):  # per-epoch lines into Prefect
        logging.getLogger(name).setLevel(logging.INFO)
    cfg = config or generative.load_config(model_name, config_path, overrides)
    result = train_task(model_name, cfg, device, Path(output), run_id, show_progress)
    publish_artifacts(result)
    return {"model": result.model, "run_id": result.run_id, "path": str(result.folder),
            "checkpoint": str(result.checkpoint), "final": result.final,
            "resumed_from_epoch": result.resumed_from_epoch}


@flow(name="train-vae", log_prints=True)
def train_vae(config_path: Path | None = None, device: str = "auto", output: Path = Path("."),
              run_id: str | None = None, overrides: dict[str, Any] | None = None,
              config: Any = None, show_progress: bool = False) -> dict[str, Any]:
    """Train the VAE on MNIST; publish checkpoint, metrics, samples and reconstructions."""
    return _train("vae", config_path, device, output, run_id, overrides, config, show_progress)


@flow(name="train-realnvp", log_prints=True)
def train_realnvp(config_path: Path | None = None, device: str = "auto", output: Path = Path("."),
                  run_id: str | None = None, overrides: dict[str, Any] | None = None,
                  config: Any = None, show_progress: bool = False) -> dict[str, Any]:
    """Train the RealNVP flow on dequantised MNIST or two moons; publish its outputs."""
    return _train("realnvp", config_path, device, output, run_id, overrides, config,
                  show_progress)


@flow(name="train-gan", log_prints=True)
def train_gan(config_path: Path | None = None, device: str = "auto", output: Path = Path("."),
              run_id: str | None = None, overrides: dict[str, Any] | None = None,
              config: Any = None, show_progress: bool = False) -> dict[str, Any]:
    """Train the GAN on MNIST; publish checkpoint, metrics (with gradient norms) and samples."""
    return _train("gan", config_path, device, output, run_id, overrides, config, show_progress)


FLOWS = {"vae": train_vae, "realnvp": train_realnvp, "gan": train_gan}


def run_training(model_name: str, **kwargs: Any) -> dict[str, Any]:
    """Call one training flow with its flow run tagged `gpu` (what the CLI does)."""
    configure_process()
    with tags(*GPU_TAGS):
        return FLOWS[model_name](**kwargs)
