"""`recsys train vae|realnvp|gan`: train one generative model as a Prefect flow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import (
    CONTEXT_SETTINGS,
    Device,
    DeviceOpt,
    Engine,
    EngineOpt,
    friendly_errors,
)

app = typer.Typer(help="Train the generative add-on models (VAE, RealNVP, GAN) on MNIST.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings=CONTEXT_SETTINGS)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="TOML file with the model's config keys (flat or under [vae] etc.); "
    "unknown keys are rejected. Default: the real-run config.")]
OutputOpt = Annotated[Path, typer.Option(
    "--output", "-o", help="Output root; runs go to OUTPUT/runs/<run_id>/generative/<model>/.")]
EpochsOpt = Annotated[int | None, typer.Option(help="Override the config's epochs.")]
RunIdOpt = Annotated[str | None, typer.Option(help="Run id (default: UTC time + suffix).")]
ProgressOpt = Annotated[bool, typer.Option(help="Show a tqdm progress bar per epoch.")]


def _train(model: str, config: Path | None, device: Device, output: Path, epochs: int | None,
           run_id: str | None, engine: Engine, progress: bool) -> None:
    from flows.settings import configure_process, console_logging

    configure_process()
    from pipelines.addons.generative import load_config

    # Validate the config before any flow run starts: a typo fails fast with exit code 2.
    cfg = load_config(model, config, {"epochs": epochs})
    output = output.resolve()
    if engine is Engine.prefect:
        from flows.generative import run_training
        from flows.server import prefect_api

        with prefect_api():
            summary = run_training(model, config_path=config, config=cfg, device=device.value,
                                   output=output, run_id=run_id, show_progress=progress)
    else:
        from pipelines.addons.generative import train_model

        console_logging()
        res = train_model(model, cfg, device=device.value, root=output, run_id=run_id,
                          show_progress=progress)
        summary = {"model": model, "run_id": res.run_id, "path": str(res.folder),
                   "checkpoint": str(res.checkpoint), "final": res.final,
                   "resumed_from_epoch": res.resumed_from_epoch}
    typer.echo(f"published {model} run {summary['run_id']} -> {summary['path']}")
    if summary["resumed_from_epoch"]:
        typer.echo(f"resumed after epoch {summary['resumed_from_epoch']}")
    typer.echo(json.dumps(summary["final"], indent=2))


@app.command()
@friendly_errors
def vae(config: ConfigOpt = None, device: DeviceOpt = Device.auto, output: OutputOpt = Path("."),
        epochs: EpochsOpt = None, run_id: RunIdOpt = None, engine: EngineOpt = Engine.prefect,
        progress: ProgressOpt = True) -> None:
    """Train the VAE; writes checkpoint, metrics, samples and reconstructions."""
    _train("vae", config, device, output, epochs, run_id, engine, progress)


@app.command()
@friendly_errors
def realnvp(config: ConfigOpt = None, device: DeviceOpt = Device.auto,
            output: OutputOpt = Path("."),
            epochs: EpochsOpt = None, run_id: RunIdOpt = None, engine: EngineOpt = Engine.prefect,
            progress: ProgressOpt = True) -> None:
    """Train the RealNVP flow (MNIST, or two moons with dataset = "moons")."""
    _train("realnvp", config, device, output, epochs, run_id, engine, progress)


@app.command()
@friendly_errors
def gan(config: ConfigOpt = None, device: DeviceOpt = Device.auto, output: OutputOpt = Path("."),
        epochs: EpochsOpt = None, run_id: RunIdOpt = None, engine: EngineOpt = Engine.prefect,
        progress: ProgressOpt = True) -> None:
    """Train the GAN; logs generator gradient norms under both losses every log_every steps."""
    _train("gan", config, device, output, epochs, run_id, engine, progress)
