"""`recsys audio ...`: mu-law encode audio catalogues (the sub-app the lead wires into recsys)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import EXIT_FAILED, friendly_errors

app = typer.Typer(
    name="audio",
    help="Audio catalogues: mu-law encode audio files into code tables for audio models.",
    no_args_is_help=True,
)


@app.callback()
def audio() -> None:
    """Audio catalogues: mu-law encode audio files into code tables for audio models."""


ENCODE_HELP = "\n\n".join([
    "Decode, mix to mono, resample, peak-normalise and mu-law encode every audio file.",
    "Reads Ogg Vorbis, FLAC and WAV. Writes catalogue, codes and rejected Parquet tables and two "
    "PNGs under OUTPUT/runs/<run_id>/audio/. Files that cannot be used are listed in the "
    "rejected table and the others go on.",
    "Exit code: 0 when at least one file was encoded, 1 when none could be, 2 for bad "
    "arguments or configuration.",
])


@app.command(help=ENCODE_HELP)
@friendly_errors
def encode(
    source: Annotated[Path | None, typer.Argument(
        help="A folder of audio (scanned recursively; credits from its catalog.csv if any) or a "
             "catalogue CSV with a 'file' column. Default: the clips shipped in the package.",
        show_default=False,
    )] = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Root folder; the run goes to OUTPUT/runs/<run_id>/audio/.",
    )] = Path("."),
    target_rate: Annotated[int | None, typer.Option(
        help="Sample rate of the codes in Hz.  \\[default: 16000]", show_default=False,
    )] = None,
    channels: Annotated[int | None, typer.Option(
        help="Mu-law codes per sample (mu = channels - 1).  \\[default: 256]", show_default=False,
    )] = None,
    chunk_samples: Annotated[int | None, typer.Option(
        help="Codes per row of the codes table.  \\[default: 16000]", show_default=False,
    )] = None,
    config: Annotated[Path | None, typer.Option(
        help="TOML file with an \\[audio] table (AudioConfig); options given here win.",
    )] = None,
    run_id: Annotated[str | None, typer.Option(
        help="Run id (default: UTC time stamp plus a random suffix).",
    )] = None,
) -> None:
    """Encode an audio catalogue through the `audio-catalogue` flow (help: ENCODE_HELP)."""
    from flows.settings import configure_process

    configure_process()  # one BLAS/OpenMP thread; our loggers routed to Prefect
    logging.getLogger("pipelines").setLevel(logging.INFO)  # per-file progress lines

    from flows.audio import audio_catalogue
    from pipelines.addons.audio import AudioConfig

    base = AudioConfig.from_toml(config) if config is not None else AudioConfig()
    overrides = {"target_rate": target_rate, "channels": channels, "chunk_samples": chunk_samples}
    cfg = AudioConfig.model_validate(
        base.model_dump() | {k: v for k, v in overrides.items() if v is not None}
    )
    result = audio_catalogue(source=source, config=cfg, output=output, run_id=run_id)
    for row in result.rejected.to_pylist():
        typer.echo(f"rejected {row['file']}: {row['reason']}: {row['message']}", err=True)
    typer.echo(f"{result.n_encoded} encoded, {result.n_rejected} rejected: "
               f"{result.run_dir / 'audio'}")
    if result.n_encoded == 0:
        typer.echo("error: no file could be encoded; see the rejected table", err=True)
        sys.exit(EXIT_FAILED)
