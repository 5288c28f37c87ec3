"""The `audio-catalogue` flow (one real Prefect run) and `recsys audio encode` (exit codes)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from flows.cli_audio import app
from pipelines.addons.audio import AudioConfig, AudioRunResult, run_audio_catalogue

runner = CliRunner()


@pytest.fixture
def engine_free_flow(monkeypatch: pytest.MonkeyPatch) -> list[AudioConfig]:
    """Swap the Prefect flow for the plain job, recording the config each CLI call passes."""
    import flows.audio

    seen: list[AudioConfig] = []

    def plain(source: Path | None = None, config: AudioConfig | None = None,
              output: Path = Path("."), run_id: str | None = None) -> AudioRunResult:
        seen.append(config or AudioConfig())
        return run_audio_catalogue(source, seen[-1].model_copy(update={"figures": False}),
                                   output, run_id)

    monkeypatch.setattr(flows.audio, "audio_catalogue", plain)
    return seen


def test_help_explains_exit_codes() -> None:
    result = runner.invoke(app, ["encode", "--help"])
    assert result.exit_code == 0
    assert "--target-rate" in result.output and "Exit code" in result.output


def test_encode_with_no_arguments_uses_shipped_clips(engine_free_flow: list[AudioConfig],
                                                      tmp_path: Path) -> None:
    result = runner.invoke(app, ["encode", "--output", str(tmp_path), "--target-rate", "8000",
                                 "--run-id", "r1"])
    assert result.exit_code == 0, result.output
    assert "4 encoded, 0 rejected" in result.output
    assert engine_free_flow[0].target_rate == 8000 and engine_free_flow[0].channels == 256
    assert (tmp_path / "runs" / "r1" / "audio" / "codes.parquet").is_file()


def test_config_file_and_options_combine(engine_free_flow: list[AudioConfig],
                                         tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[audio]\ntarget_rate = 8000\nchunk_samples = 100\n")
    result = runner.invoke(app, ["encode", "-o", str(tmp_path), "--config",
                                 str(tmp_path / "a.toml"), "--channels", "16"])
    assert result.exit_code == 0, result.output
    assert engine_free_flow[0] == AudioConfig(target_rate=8000, chunk_samples=100, channels=16)


def test_exit_1_only_when_nothing_could_be_encoded(engine_free_flow: list[AudioConfig],
                                                   tmp_path: Path) -> None:
    audio = tmp_path / "in"
    audio.mkdir()
    (audio / "broken.flac").write_bytes(b"fLaC nope")
    result = runner.invoke(app, ["encode", str(audio), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "broken.flac: corrupt" in result.output and "no file could be encoded" in result.output
    sf.write(audio / "ok.wav", [0.1, -0.2, 0.3] * 100, 8000)
    result = runner.invoke(app, ["encode", str(audio), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1 encoded, 1 rejected" in result.output


@pytest.mark.parametrize("args, message", [
    (["encode", "nowhere/at/all"], "does not exist"),
    (["encode", "--channels", "1"], "channels"),
])
def test_bad_arguments_exit_2(engine_free_flow: list[AudioConfig], tmp_path: Path,
                              args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.flow
@pytest.mark.slow
def test_flow_encodes_the_shipped_clips(prefect_harness: None, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.audio import audio_catalogue

    result = audio_catalogue(output=tmp_path, run_id="flow-test")
    assert result.run_dir == tmp_path / "runs" / "flow-test"
    assert result.n_encoded == 4 and result.n_rejected == 0
    assert min(result.catalogue.column("snr_db").to_pylist()) > 35
    assert sorted(p.name for p in result.figures) == ["companding.png", "waveform.png"]

    async def artifact_rows() -> list[dict[str, object]]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["audio-catalogue-files"])))
        return [row for a in found  # table artifacts store their rows as a JSON string
                for row in (json.loads(a.data) if isinstance(a.data, str) else a.data)]

    rows = asyncio.run(artifact_rows())
    assert len(rows) == 4 and {r["status"] for r in rows} == {"encoded"}


@pytest.mark.flow
@pytest.mark.slow
def test_default_relative_output_publishes_names_the_run_and_embeds_figures(
        prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`recsys audio encode` with its default output "." (relative) no longer fails after writing.

    The figures used to become file:// links (which raised on a relative path); now they are
    inlined as data URIs, which the Prefect UI renders.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
    )

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["encode", "--run-id", "relative-1", "--target-rate", "8000"])
    assert result.exit_code == 0, result.output
    assert "4 encoded, 0 rejected" in result.output
    published = tmp_path / "runs" / "relative-1" / "audio"
    assert str(published) in result.output  # an absolute, copyable path
    assert (published / "codes.parquet").is_file() and (published / "waveform.png").is_file()

    async def read() -> tuple[list[str], list[str]]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["relative-1"])))
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["audio-catalogue-figures"])))
        return [r.name for r in runs], [str(a.data) for a in found]

    names, pages = asyncio.run(read())
    assert names == ["relative-1"]
    page = next(p for p in pages if "relative-1" in p)
    assert page.count("](data:image/png;base64,") == 2 and "file://" not in page


@pytest.mark.flow
def test_flow_without_run_id_adopts_its_flow_run_name(prefect_harness: None,
                                                      tmp_path: Path) -> None:
    from flows.audio import audio_catalogue

    result = audio_catalogue(output=tmp_path, config=AudioConfig(figures=False,
                                                                 target_rate=8000))
    assert result.run_dir.parent == tmp_path / "runs"
    assert (result.run_dir / "audio" / "codes.parquet").is_file()
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["run_id"] == result.run_dir.name
