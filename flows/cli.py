"""The `recsys` command line: run the nightly flow, show the config, and the add-on flows."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import friendly_errors
from flows.settings import configure_process

app = typer.Typer(
    help="Offline batch recommender: nightly recommendations plus generative add-ons.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="TOML run config (see README 'Config reference'); defaults built in.")]
PresetOpt = Annotated[str | None, typer.Option(
    help="Read a known public format: movielens-latest, movielens-1m, movielens-100k, lastfm.")]
DataOpt = Annotated[Path | None, typer.Option(
    help="With --preset: the data folder, or the interactions file inside it.")]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="Output root; runs go to OUTPUT/runs/<run_id>/ (default: .).")]


def load_config(config: Path | None, preset: str | None, data: Path | None,
                output: Path | None) -> Any:
    """Build the RunConfig from a TOML file and/or a preset, then apply --output."""
    from features.errors import ConfigError
    from pipelines.nightly import RunConfig

    raw: dict[str, Any] = {}
    base = Path(".")
    if config is not None:
        cfg = RunConfig.from_toml(config)
        raw = cfg.model_dump(mode="json")
        base = config.parent
    if preset is not None:
        if data is None:
            raise ConfigError("--preset needs --data: the folder holding that data set's files")
        src: dict[str, Any] = {"preset": preset}
        if data.is_file():
            src |= {"folder": str(data.parent.resolve()), "path": data.name}
        else:
            src["folder"] = str(data.resolve())
        raw["source"] = src
    elif data is not None:
        raise ConfigError("--data needs --preset (or describe the files in a --config file)")
    if output is not None:
        raw.setdefault("output", {})["root"] = str(output)
    return RunConfig.from_dict(raw, base=base) if raw else RunConfig()


@app.command()
@friendly_errors
def run(
    config: ConfigOpt = None, preset: PresetOpt = None, data: DataOpt = None,
    output: OutputOpt = None,
    run_id: Annotated[str | None, typer.Option(help="Run id (default: UTC time + suffix).")] = None,
    engine: Annotated[str, typer.Option(
        help="prefect (default: a real flow run, visible in the UI) or local (no Prefect).")
    ] = "prefect",
) -> None:
    """Run the nightly recommendation flow and print rows per table and time per stage."""
    configure_process()
    cfg = load_config(config, preset, data, output)
    start = time.perf_counter()
    if engine == "local":
        from pipelines.nightly import run_nightly

        res = run_nightly(cfg, run_id)
        summary = {"run_id": res.run_id, "path": str(res.path),
                   "stages": [r.__dict__ for r in res.reports]}
    elif engine == "prefect":
        from flows.recommend import nightly_recommendations

        summary = nightly_recommendations(config=cfg, run_id=run_id)
    else:
        raise ValueError(f"--engine must be prefect or local, got {engine!r}")
    typer.echo(f"published run {summary['run_id']} -> {summary['path']}")
    typer.echo(f"{'stage':<18}{'seconds':>9}  rows")
    for st in summary["stages"]:  # type: ignore[union-attr]
        rows = ", ".join(f"{k}={v:,}" for k, v in st["rows"].items())
        cached = "  (unchanged: reused)" if st.get("cached") else ""
        typer.echo(f"{st['stage']:<18}{st['seconds']:>9.2f}  {rows}{cached}")
    typer.echo(f"total {time.perf_counter() - start:.1f} s")


@app.command()
@friendly_errors
def evaluate(
    config: ConfigOpt = None, preset: PresetOpt = None, data: DataOpt = None,
    output: OutputOpt = None,
    engine: Annotated[str, typer.Option(help="prefect (default) or local.")] = "prefect",
) -> None:
    """Compare every approach (sources, fusion, ranker, diversity) under the hold-out protocol.

    Writes evaluation.parquet and evaluation.md to a run folder (runs/latest is not moved).
    """
    configure_process()
    cfg = load_config(config, preset, data, output)
    if engine == "local":
        from pipelines.nightly import run_nightly

        path = run_nightly(cfg, evaluate_only=True).path
    elif engine == "prefect":
        from flows.recommend import offline_evaluation

        path = Path(str(offline_evaluation(config=cfg)["path"]))
    else:
        raise ValueError(f"--engine must be prefect or local, got {engine!r}")
    typer.echo((path / "evaluation.md").read_text())
    typer.echo(f"written to {path}")


@app.command("show-config")
@friendly_errors
def show_config(config: ConfigOpt = None, preset: PresetOpt = None, data: DataOpt = None,
                output: OutputOpt = None) -> None:
    """Print the effective run config (defaults merged with --config/--preset) as JSON."""
    cfg = load_config(config, preset, data, output)
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


@app.command("serve")
@friendly_errors
def serve_command(
    cron: Annotated[str, typer.Option(help="When the nightly run starts (cron syntax).")
                    ] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron, e.g. Europe/Berlin."
                                          )] = "UTC",
    config: ConfigOpt = None,
) -> None:
    """Serve the schedules on this machine (nightly run + on-demand flows) until stopped.

    Needs a Prefect API: start `prefect server start` and set PREFECT_API_URL first.
    """
    import zoneinfo

    from flows.settings import configure_process

    configure_process()
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}; use an IANA name such as "
                         "Europe/Berlin or UTC") from None
    from flows.serve import serve_all

    serve_all(cron=cron, timezone=timezone, config_path=config)


def _add_subapps() -> None:
    """Mount the add-on flows' command groups (each keeps its heavy imports inside commands)."""
    from flows import cli_audio, cli_style, cli_train

    app.add_typer(cli_train.app, name="train")
    app.add_typer(cli_style.app, name="style")
    app.add_typer(cli_audio.app, name="audio")


_add_subapps()


def main() -> None:
    """Entry point of the `recsys` script."""
    app()


if __name__ == "__main__":
    main()
