"""The `recsys` command line: run the nightly flow, show the config, and the add-on flows."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import (
    CONTEXT_SETTINGS,
    Engine,
    QuietOpt,
    RunEngineOpt,
    VerboseOpt,
    escape_help_markup,
    friendly_errors,
)
from flows.settings import Verbosity, configure_process, console_logging

app = typer.Typer(
    help="Offline batch recommender: nightly recommendations plus generative add-ons.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings=CONTEXT_SETTINGS,
)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="TOML run config (see README 'Config reference'); defaults built in.")]
PresetOpt = Annotated[str | None, typer.Option(
    help="Read a known public format: movielens-latest, movielens-1m, movielens-100k, lastfm.")]
DataOpt = Annotated[Path | None, typer.Option(
    help="With --preset: the data folder, or the interactions file inside it.")]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="Output root; runs go to OUTPUT/runs/<run_id>/ (default: .).")]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Recompute every stage instead of reusing unchanged results "
    "(sets output.cache = false).")]
RunIdOpt = Annotated[str | None, typer.Option(help="Run id (default: UTC time + suffix).")]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recsys-nightly")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def verbosity(quiet: bool, verbose: bool) -> Verbosity | None:
    """The level the flags ask for; None when neither is given (keep the current one)."""
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose contradict each other; pass one")
    return Verbosity.QUIET if quiet else Verbosity.VERBOSE if verbose else None


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"recsys {_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Offline batch recommender: nightly recommendations plus generative add-ons.

    The product's log lines (stage starts, input sizes, results, times) go to the terminal and
    to the Prefect run logs at INFO; -q shows warnings only, -v adds debug detail.
    """
    configure_process(verbosity(quiet, verbose) or Verbosity.NORMAL)


def load_config(config: Path | None, preset: str | None, data: Path | None,
                output: Path | None, no_cache: bool = False) -> Any:
    """Build the RunConfig from a TOML file and/or a preset, then apply --output and --no-cache.

    --output is taken from the working directory (like every other path on a command line),
    paths inside the TOML file from that file's folder.
    """
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
        raw.setdefault("output", {})["root"] = str(output.resolve())
    cfg = RunConfig.from_dict(raw, base=base) if raw else RunConfig()
    if no_cache:
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"cache": False})})
    return cfg


def with_engine(cfg: Any, engine: Engine | None) -> tuple[Any, Engine]:
    """The engine to use (--engine, else [engine] kind) and the config that says so."""
    chosen = Engine(cfg.engine.kind) if engine is None else engine
    return cfg.model_copy(update={"engine": cfg.engine.model_copy(
        update={"kind": chosen.value})}), chosen


def _print_summary(summary: dict[str, Any], seconds: float) -> None:
    typer.echo(f"published run {summary['run_id']} -> {summary['path']}")
    typer.echo(f"{'stage':<18}{'seconds':>9}  rows")
    for st in summary["stages"]:
        rows = ", ".join(f"{k}={v:,}" for k, v in st["rows"].items())
        cached = "  (unchanged: reused)" if st.get("cached") else ""
        typer.echo(f"{st['stage']:<18}{st['seconds']:>9.2f}  {rows}{cached}")
    typer.echo(f"total {seconds:.1f} s")


@app.command()
@friendly_errors
def run(
    config: ConfigOpt = None, preset: PresetOpt = None, data: DataOpt = None,
    output: OutputOpt = None, run_id: RunIdOpt = None, engine: RunEngineOpt = None,
    no_cache: NoCacheOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Run the nightly recommendation flow and print rows per table and time per stage.

    Exit codes: 0 published; 2 bad input or config (nothing published); 1 failed.
    """
    configure_process(verbosity(quiet, verbose))
    cfg, engine = with_engine(load_config(config, preset, data, output, no_cache), engine)
    start = time.perf_counter()
    if engine is Engine.local:
        from pipelines.nightly import run_nightly

        console_logging()
        res = run_nightly(cfg, run_id)
        summary = {"run_id": res.run_id, "path": str(res.path),
                   "stages": [r.__dict__ for r in res.reports]}
    else:
        from flows.server import prefect_api

        with prefect_api():
            from flows.recommend import nightly_recommendations, with_stage_threads

            summary = with_stage_threads(nightly_recommendations, cfg)(config=cfg,
                                                                       run_id=run_id)
    _print_summary(summary, time.perf_counter() - start)


@app.command()
@friendly_errors
def evaluate(
    config: ConfigOpt = None, preset: PresetOpt = None, data: DataOpt = None,
    output: OutputOpt = None, run_id: RunIdOpt = None, engine: RunEngineOpt = None,
    no_cache: NoCacheOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Compare every approach (sources, fusion, ranker, diversity) under the hold-out protocol.

    Writes evaluation.parquet and evaluation.md to a run folder (runs/latest is not moved).
    """
    configure_process(verbosity(quiet, verbose))
    cfg, engine = with_engine(load_config(config, preset, data, output, no_cache), engine)
    if engine is Engine.local:
        from pipelines.nightly import run_nightly

        console_logging()
        path = run_nightly(cfg, run_id, evaluate_only=True).path
    else:
        from flows.server import prefect_api

        with prefect_api():
            from flows.recommend import offline_evaluation, with_stage_threads

            flow_ = with_stage_threads(offline_evaluation, cfg)
            path = Path(str(flow_(config=cfg, run_id=run_id)["path"]))
    typer.echo((path / "evaluation.md").read_text())
    typer.echo(f"written to {path}")


@app.command("show-config")
@friendly_errors
def show_config(config: ConfigOpt = None, preset: PresetOpt = None, data: DataOpt = None,
                output: OutputOpt = None, no_cache: NoCacheOpt = False) -> None:
    """Print the effective run config (defaults merged with --config/--preset) as JSON."""
    cfg = load_config(config, preset, data, output, no_cache)
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


@app.command("serve")
@friendly_errors
def serve_command(
    cron: Annotated[str, typer.Option(help="When the nightly run starts (cron syntax).")
                    ] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(
        help="IANA time zone of the cron, e.g. Europe/Berlin.")] = "UTC",
    config: ConfigOpt = None, preset: PresetOpt = None, data: DataOpt = None,
    output: OutputOpt = None,
) -> None:
    """Serve every deployment from this machine (the nightly cron + on-demand flows) until stopped.

    Needs a Prefect API: run `prefect server start` and set PREFECT_API_URL first. Stop it with
    Ctrl-C or SIGTERM (what systemd and docker send); the schedules stay active.
    """
    import zoneinfo

    from features.errors import ConfigError
    from flows.server import PrefectServerError, check_reachable, configured_api_url

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {timezone!r}; use an IANA name such as "
                          "Europe/Berlin or UTC") from None
    if config is not None or preset is not None:
        load_config(config, preset, data, output)  # a typo fails now, not at 2 a.m.
    url = configured_api_url()
    if url is None:
        raise PrefectServerError(
            "`recsys serve` needs a Prefect server that outlives it: start one with "
            "`prefect server start` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    check_reachable(url)
    from flows.serve import DeploymentInputs, serve_all

    serve_all(cron=cron, timezone=timezone, inputs=DeploymentInputs(
        config_path=config, preset=preset, data=data, output=output))


def _add_subapps() -> None:
    """Mount the add-on flows' command groups (each keeps its heavy imports inside commands)."""
    from flows import cli_audio, cli_style, cli_train

    app.add_typer(cli_train.app, name="train")
    app.add_typer(cli_style.app, name="style")
    app.add_typer(cli_audio.app, name="audio")
    escape_help_markup(app)


_add_subapps()


def main() -> None:
    """Entry point of the `recsys` script."""
    app()


if __name__ == "__main__":
    main()
