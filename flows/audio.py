"""Prefect flow `audio-catalogue`: mu-law encode an audio catalogue into runs/<run_id>/audio/."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.artifacts import markdown_image, run_name
from pipelines.addons.audio import (
    AudioConfig,
    AudioRunResult,
    CatalogueEntry,
    EncodeResult,
    encode_catalogue,
    load_catalogue,
    open_run,
    publish_run,
    render_figures,
)
from pipelines.store import RunFolder, new_run_id

# No retries: every step reads or writes local files, where a retry meets the same error.
# No caching: inputs include open run folders, and a re-run must re-read the audio.


@task(name="list-audio-files", cache_policy=NO_CACHE)
def list_files(source: Path | None) -> list[CatalogueEntry]:
    """Read the catalogue CSV, or scan the folder, for the files to encode."""
    return load_catalogue(source)


@task(name="encode-audio-files", cache_policy=NO_CACHE)
def encode_files(
    entries: list[CatalogueEntry], config: AudioConfig, run: RunFolder, progress: bool = True
) -> EncodeResult:
    """Decode, mix, resample, normalise and encode each file; reject the unusable ones."""
    artifact = create_progress_artifact(0.0, key="audio-encode-progress",
                                        description=f"Files encoded in {run.run_id}")

    def on_file(done: int, total: int) -> None:
        update_progress_artifact(artifact, 100.0 * done / max(total, 1))

    return encode_catalogue(entries, config, run, progress=progress, on_file=on_file)


@task(name="draw-audio-figures", cache_policy=NO_CACHE)
def draw_figures(result: EncodeResult, config: AudioConfig, run: RunFolder) -> list[Path]:
    """Draw the companding curve and one file's waveform before and after."""
    return render_figures(result, config, run)


@task(name="publish-audio-run", cache_policy=NO_CACHE)
def publish(
    run: RunFolder, result: EncodeResult, config: AudioConfig, source: Path | None
) -> AudioRunResult:
    """Write the manifest and move the run into place as runs/<run_id>."""
    return publish_run(run, result, config, source)


def _report(published: AudioRunResult) -> None:
    """A table artifact with one row per file, and a markdown one pointing at the figures."""
    rows = [{
        "file": r["file"], "status": "encoded", "seconds": round(r["duration_s"], 2),
        "samples": r["samples"], "peak": round(r["peak"], 4), "snr_db": round(r["snr_db"], 2),
        "detail": r["note"] or "",
    } for r in published.catalogue.to_pylist()]
    rows += [{
        "file": r["file"], "status": f"rejected: {r['reason']}", "seconds": None,
        "samples": None, "peak": None, "snr_db": None, "detail": r["message"],
    } for r in published.rejected.to_pylist()]
    create_table_artifact(rows, key="audio-catalogue-files",
                          description=f"Per-file results of {published.run_dir.name}")
    images = "\n\n".join(f"{markdown_image(p, p.stem)}  \n`{p}`" for p in published.figures)
    create_markdown_artifact(
        f"# Audio catalogue {published.run_dir.name}\n\n"
        f"{published.n_encoded} encoded, {published.n_rejected} rejected; tables in "
        f"`{published.run_dir / 'audio'}`.\n\n{images}\n",
        key="audio-catalogue-figures", description="Companding curve and waveform before/after",
    )


@flow(name="audio-catalogue", flow_run_name=run_name)
def audio_catalogue(
    source: Path | None = None,
    config: AudioConfig | None = None,
    output: Path = Path("."),
    run_id: str | None = None,
    progress: bool = True,
) -> AudioRunResult:
    """Turn a folder or catalogue CSV of audio into mu-law code tables under runs/<run_id>/audio/.

    Files that cannot be encoded land in the `rejected` table and the others go on; the caller
    decides what an all-rejected run means (the CLI exits 1). The flow run is named after the
    run id; `progress` shows a bar over the files in the terminal.
    """
    config = config or AudioConfig()
    logger = get_run_logger()
    run_id = run_id or flow_run.name or new_run_id()  # the flow run is named after the run id
    entries = list_files(source)
    with open_run(output, run_id) as run:
        result = encode_files(entries, config, run, progress)
        draw_figures(result, config, run)
        published = publish(run, result, config, source)
    _report(published)
    if published.n_encoded == 0:
        logger.error("nothing could be encoded: %d files rejected", published.n_rejected)
    else:
        logger.info("encoded %d files (%.1f s of audio), rejected %d; run in %s",
                    published.n_encoded, result.audio_s, published.n_rejected,
                    published.run_dir)
    return published
