"""Audio catalogue job without Prefect: listing, decoding, resampling, bad input, output tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from pydantic import ValidationError

from features.audio import mu_law_decode, round_trip_snr_db
from features.errors import ConfigError, DataError
from pipelines.addons.audio import (
    CATALOGUE_SCHEMA,
    DEFAULT_CATALOGUE,
    REJECTED_SCHEMA,
    AudioConfig,
    FileRejected,
    chunk_table,
    codes_schema,
    encode_catalogue,
    load_catalogue,
    load_mono,
    open_run,
    run_audio_catalogue,
    scan_folder,
)

RATE = 22_050
FAST = AudioConfig(figures=False)  # matplotlib costs a second per run; one test draws


def tone(freq: float, seconds: float, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    """A sine tone, float32."""
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def bad_catalogue(tmp_path: Path) -> Path:
    """Two good files and one of each kind of bad input, listed in a catalog.csv."""
    sf.write(tmp_path / "mono.wav", tone(440, 1.0), RATE)
    left, right = tone(440, 0.5, 44_100, 0.6), tone(660, 0.5, 44_100, 0.2)
    sf.write(tmp_path / "stereo.flac", np.stack([left, right], axis=1), 44_100)
    (tmp_path / "corrupt.ogg").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.wav").write_text("not audio at all")
    with_nan = tone(440, 0.5)
    with_nan[1234] = np.nan
    sf.write(tmp_path / "nan.wav", with_nan, RATE, subtype="FLOAT")
    sf.write(tmp_path / "silence.wav", np.zeros(RATE, np.float32), RATE)
    (tmp_path / "song.mp3").write_bytes(b"ID3\x04")
    rows = ["mono.wav,Mono tone,Tester,CC0", "stereo.flac,Stereo tone,Tester,CC0",
            "corrupt.ogg,,,", "notes.wav,,,", "nan.wav,,,", "silence.wav,,,", "song.mp3,,,",
            "missing.ogg,Gone,,"]
    (tmp_path / "catalog.csv").write_text("file,title,artist,licence\n" + "\n".join(rows) + "\n")
    return tmp_path / "catalog.csv"


def test_bad_inputs_are_rejected_and_the_rest_encoded(bad_catalogue: Path, tmp_path: Path) -> None:
    result = run_audio_catalogue(bad_catalogue, AudioConfig(), root=tmp_path / "out")
    assert result.catalogue.schema == CATALOGUE_SCHEMA
    assert result.rejected.schema == REJECTED_SCHEMA
    assert result.catalogue.column("file").to_pylist() == ["mono.wav", "stereo.flac"]
    reasons = dict(zip(result.rejected.column("file").to_pylist(),
                       result.rejected.column("reason").to_pylist(), strict=True))
    assert reasons == {"corrupt.ogg": "corrupt", "notes.wav": "corrupt", "nan.wav": "non-finite",
                       "silence.wav": "silent", "song.mp3": "unsupported-format",
                       "missing.ogg": "missing"}
    messages = dict(zip(result.rejected.column("file").to_pylist(),
                        result.rejected.column("message").to_pylist(), strict=True))
    assert "sample 1234" in messages["nan.wav"]
    assert "not found" in messages["missing.ogg"] and "missing.ogg" in messages["missing.ogg"]
    assert "silence_peak" in messages["silence.wav"]
    stereo = result.catalogue.to_pylist()[1]
    assert stereo["source_channels"] == 2 and stereo["note"] == "mixed 2 channels to mono"
    assert stereo["title"] == "Stereo tone" and stereo["licence"] == "CC0"
    assert result.run_dir.parent == tmp_path / "out" / "runs"
    assert {p.name for p in (result.run_dir / "audio").iterdir()} == {
        "catalogue.parquet", "codes.parquet", "rejected.parquet", "companding.png",
        "waveform.png"}
    assert not (tmp_path / "out" / "runs" / "latest").exists()  # only recommend moves latest


def test_codes_table_streams_back_to_each_file(bad_catalogue: Path, tmp_path: Path) -> None:
    config = AudioConfig(chunk_samples=5_000, figures=False)
    result = run_audio_catalogue(bad_catalogue, config, root=tmp_path / "out")
    codes = pq.ParquetFile(result.run_dir / "audio" / "codes.parquet")
    assert codes.schema_arrow == codes_schema(256)
    assert codes.metadata.num_row_groups == result.n_encoded  # one row group per file
    for group, row in enumerate(result.catalogue.to_pylist()):
        table = codes.read_row_group(group)
        assert set(table.column("file_id").to_pylist()) == {row["file_id"]}
        assert table.column("chunk").to_pylist() == list(range(row["chunks"]))
        lengths = [len(c) for c in table.column("codes").to_pylist()]
        assert all(n == 5_000 for n in lengths[:-1]) and 0 < lengths[-1] <= 5_000
        flat = np.concatenate([c.values.to_numpy() for c in table.column("codes").chunks])
        assert flat.dtype == np.uint8 and flat.size == row["samples"]
        assert flat.max() == 255 or flat.min() == 0  # peak-normalised: the loudest hits an end
        audio = load_mono(Path(bad_catalogue.parent / row["file"]), config).samples
        assert round_trip_snr_db(audio / row["peak"], codes=flat) == pytest.approx(
            row["snr_db"], abs=1e-3)
        assert row["snr_db"] > 35


def test_resampling_is_band_limited_not_decimation(tmp_path: Path) -> None:
    # 1 kHz stays; 11 kHz lies above the 8 kHz Nyquist limit of 16 kHz output and must be
    # filtered out, where naive decimation would fold it down to 5 kHz.
    rate = 44_100
    sf.write(tmp_path / "two.wav", tone(1000, 1.0, rate, 0.4) + tone(11_000, 1.0, rate, 0.4), rate)
    audio = load_mono(tmp_path / "two.wav", AudioConfig(target_rate=16_000))
    assert audio.source_rate == rate and abs(audio.samples.size - 16_000) <= 1
    spectrum = np.abs(np.fft.rfft(audio.samples[2000:14000]))
    freqs = np.fft.rfftfreq(12_000, 1 / 16_000)
    assert abs(freqs[np.argmax(spectrum)] - 1000) < 5
    alias = spectrum[(freqs > 4900) & (freqs < 5100)].max()
    assert alias < 1e-3 * spectrum.max()


def test_upsampling_and_same_rate(tmp_path: Path) -> None:
    sf.write(tmp_path / "low.wav", tone(300, 0.5, 8000), 8000)
    up = load_mono(tmp_path / "low.wav", AudioConfig(target_rate=16_000))
    assert abs(up.samples.size - 8000) <= 1
    same = load_mono(tmp_path / "low.wav", AudioConfig(target_rate=8000))
    np.testing.assert_allclose(same.samples, tone(300, 0.5, 8000), atol=1e-4)  # 16-bit PCM


def test_stereo_is_mixed_to_mono_by_averaging(tmp_path: Path) -> None:
    left, right = tone(440, 0.2, 16_000, 0.8), tone(440, 0.2, 16_000, 0.2)
    sf.write(tmp_path / "st.flac", np.stack([left, right], axis=1), 16_000, subtype="PCM_24")
    audio = load_mono(tmp_path / "st.flac", AudioConfig(target_rate=16_000))
    assert audio.source_channels == 2
    np.testing.assert_allclose(audio.samples, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("name, write, reason", [
    ("inf.wav", lambda p: sf.write(p, np.array([0.1, np.inf, 0.2], np.float32), RATE,
                                   subtype="FLOAT"), "non-finite"),
    ("empty.wav", lambda p: sf.write(p, np.zeros(0, np.float32), RATE), "empty"),
    ("zero.flac", lambda p: p.write_bytes(b""), "corrupt"),
    ("quiet.wav", lambda p: sf.write(p, np.full(RATE, 2e-5, np.float32), RATE,
                                     subtype="FLOAT"), "silent"),
    ("aiff.wav", lambda p: sf.write(p, tone(440, 0.1), RATE, format="AIFF"),
     "unsupported-format"),
])
def test_each_bad_input_names_its_reason(tmp_path: Path, name: str, write: object,
                                         reason: str) -> None:
    path = tmp_path / name
    write(path)  # type: ignore[operator]
    result = run_audio_catalogue(tmp_path, FAST, root=tmp_path / "out")
    assert result.n_encoded == 0
    assert result.rejected.to_pylist()[0]["reason"] == reason


def test_nothing_encodable_still_publishes_the_rejections(tmp_path: Path) -> None:
    (tmp_path / "a.ogg").write_bytes(b"OggS broken")
    result = run_audio_catalogue(tmp_path, root=tmp_path / "out")
    assert result.n_encoded == 0 and result.n_rejected == 1
    assert (result.run_dir / "manifest.json").is_file()
    assert [p.name for p in result.figures] == ["companding.png"]  # no waveform to draw


def test_duplicates_and_empty_rows(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(440, 0.2), RATE)
    (tmp_path / "c.csv").write_text("file\na.wav\n./a.wav\n\n,\n")
    result = run_audio_catalogue(tmp_path / "c.csv", FAST, root=tmp_path / "out")
    assert result.n_encoded == 1
    assert result.rejected.column("reason").to_pylist() == ["duplicate", "missing"]
    assert "'file' cell" in result.rejected.column("message")[1].as_py()


def test_folder_scan_uses_catalog_credits_by_path_then_stem(tmp_path: Path) -> None:
    (tmp_path / "wav").mkdir()
    sf.write(tmp_path / "x.ogg", tone(440, 0.2), RATE, format="OGG", subtype="VORBIS")
    sf.write(tmp_path / "wav" / "x.wav", tone(440, 0.2), RATE)
    sf.write(tmp_path / "y.flac", tone(440, 0.2), RATE)
    (tmp_path / "x.txt").write_text("credits")
    (tmp_path / ".hidden.wav").write_text("skip me")
    (tmp_path / "catalog.csv").write_text("file,title,artist,license\nx.ogg,Ex,Someone,CC BY\n")
    entries = scan_folder(tmp_path)
    assert [e.file for e in entries] == ["wav/x.wav", "x.ogg", "y.flac"]
    assert [(e.title, e.licence) for e in entries] == [("Ex", "CC BY"), ("Ex", "CC BY"),
                                                      ("y", None)]
    assert load_catalogue(tmp_path) == entries


def test_catalogue_errors_name_the_fix(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("path,title\na.wav,A\n")
    with pytest.raises(DataError, match="'file' column"):
        load_catalogue(tmp_path / "c.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_catalogue(tmp_path / "nope")
    (tmp_path / "list.txt").write_text("a.wav\n")
    with pytest.raises(DataError, match="catalogue .csv"):
        load_catalogue(tmp_path / "list.txt")


def test_missing_file_rejection_comes_from_load_mono(tmp_path: Path) -> None:
    with pytest.raises(FileRejected) as info:
        load_mono(tmp_path / "gone.flac", AudioConfig())
    assert info.value.reason == "missing"


def test_config_validation_and_toml(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        AudioConfig(target_rte=8000)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AudioConfig(channels=1)
    with pytest.raises(ValidationError):
        AudioConfig().target_rate = 8000  # type: ignore[misc]
    (tmp_path / "a.toml").write_text("[audio]\ntarget_rate = 8000\nchannels = 16\n")
    assert AudioConfig.from_toml(tmp_path / "a.toml") == AudioConfig(target_rate=8000, channels=16)
    (tmp_path / "b.toml").write_text("[audio]\nchanels = 16\n")
    with pytest.raises(ValidationError, match="chanels"):
        AudioConfig.from_toml(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text("[audio\n")
    with pytest.raises(ConfigError, match="TOML"):
        AudioConfig.from_toml(tmp_path / "c.toml")


def test_wide_codes_use_uint16(tmp_path: Path) -> None:
    codes = np.array([0, 1000, 65535], dtype=np.uint16)
    table = chunk_table(3, codes, 2, 65536)
    assert table.schema == codes_schema(65536)
    assert table.column("codes").to_pylist() == [[0, 1000], [65535]]
    sf.write(tmp_path / "a.wav", tone(440, 0.2), RATE)
    config = AudioConfig(channels=1024, figures=False)
    result = run_audio_catalogue(tmp_path, config, root=tmp_path / "out")
    assert result.catalogue.column("snr_db")[0].as_py() > 45  # ~6 dB per extra bit


def test_shipped_default_catalogue_is_small_and_credited() -> None:
    folder = DEFAULT_CATALOGUE.parent
    entries = load_catalogue()
    assert 3 <= len(entries) <= 4
    assert sum(e.path.stat().st_size for e in entries) < 1_000_000
    for e in entries:
        assert e.title and e.artist and e.licence
        assert (folder / e.file).with_suffix(".txt").is_file()


@pytest.mark.slow
def test_full_shared_audio_set(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "audio"
    result = run_audio_catalogue(source, FAST, root=tmp_path)
    assert result.n_rejected == 0
    assert result.n_encoded == len(scan_folder(source))
    rows = result.catalogue.to_pylist()
    assert all(r["snr_db"] >= 35 for r in rows), [(r["file"], r["snr_db"]) for r in rows]
    assert {r["kind"] for r in rows} == {"music", "speech", "field-recording"}
    for r in rows:  # target-rate length agrees with the source duration
        assert abs(r["samples"] - r["duration_s"] * 16_000) <= 2
    decoded = mu_law_decode(np.array([0, 255], dtype=np.uint8))
    assert decoded.tolist() == [-1.0, 1.0]


def test_progress_bar_and_per_file_callback(bad_catalogue: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    entries = load_catalogue(bad_catalogue)
    calls: list[tuple[int, int]] = []
    with open_run(tmp_path / "out") as run:
        result = encode_catalogue(entries, FAST, run, progress=True,
                                  on_file=lambda done, total: calls.append((done, total)))
    n = len(entries)
    assert calls == [(k, n) for k in range(1, n + 1)]  # once per file, rejected ones included
    assert len(result.encoded) + len(result.rejected) == n
    err = capsys.readouterr().err
    assert "audio encode" in err and f"{n}/{n}" in err  # the tqdm bar, on stderr


def test_relative_root_gives_absolute_result_paths(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sf.write(tmp_path / "a.wav", tone(440, 0.2), RATE)
    monkeypatch.chdir(tmp_path)
    result = run_audio_catalogue(Path("."), FAST, root=Path("out"), run_id="rel")
    assert result.run_dir == tmp_path / "out" / "runs" / "rel" and result.run_dir.is_absolute()
    assert all(p.is_absolute() for p in result.figures)
