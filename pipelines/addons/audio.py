"""Audio catalogue job: decode, mix to mono, resample, peak-normalise and mu-law encode files."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import soxr
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from features.audio import (
    DEFAULT_CHANNELS,
    MAX_CHANNELS,
    code_dtype,
    decode_table,
    mu_law_compand,
    mu_law_decode,
    mu_law_encode,
    round_trip_snr_db,
)
from features.errors import ConfigError, DataError
from features.resources import data_path
from pipelines.store import (
    RunFolder,
    atomic_path,
    clean_stale,
    new_run_id,
    output_lock,
    write_bytes_atomic,
)

log = logging.getLogger(__name__)

DEFAULT_CATALOGUE = data_path("audio", "catalog.csv")
TOPIC = "audio"

SUPPORTED_SUFFIXES = frozenset({".ogg", ".oga", ".flac", ".wav"})
"""File name endings read as audio: Ogg Vorbis, FLAC and WAV."""
SUPPORTED_FORMATS = frozenset({"OGG", "FLAC", "WAV", "WAVEX", "RF64"})
"""libsndfile container names accepted once a file is open (WAVEX/RF64 are WAV variants)."""
OTHER_AUDIO_SUFFIXES = frozenset(
    {".mp3", ".m4a", ".aac", ".opus", ".wma", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64"}
)
"""Audio formats a directory scan reports as unsupported instead of ignoring them."""

# Reasons in the `rejected` table.
MISSING, UNSUPPORTED, CORRUPT, EMPTY = "missing", "unsupported-format", "corrupt", "empty"
NON_FINITE, SILENT, DUPLICATE, FAILED = "non-finite", "silent", "duplicate", "error"


class AudioConfig(BaseModel):
    """Settings of the audio catalogue job (TOML table `[audio]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_rate: PositiveInt = 16_000
    """Sample rate of the encoded codes in Hz; every file is resampled to it with soxr."""
    channels: int = Field(DEFAULT_CHANNELS, ge=2, le=MAX_CHANNELS)
    """Mu-law codes per sample (mu = channels - 1); 256 gives one byte per sample."""
    chunk_samples: PositiveInt = 16_000
    """Codes per row of the `codes` table; a file's last chunk is shorter."""
    silence_peak: float = Field(1e-4, gt=0.0, lt=1.0)
    """Files whose peak after mixing and resampling is below this (1e-4 is -80 dBFS, about
    three 16-bit steps) are rejected as silent: peak normalisation would only amplify noise."""
    resample_quality: Literal["VHQ", "HQ", "MQ", "LQ", "QQ"] = "HQ"
    """soxr quality preset (HQ: 20-bit precision, passband to 91% of Nyquist)."""
    read_frames: PositiveInt = 65_536
    """Frames decoded per read, which bounds memory for the source-rate audio."""
    plot_file: str | None = None
    """Catalogue `file` drawn in waveform.png; default: the first file that encoded."""
    figures: bool = True
    """Draw companding.png and waveform.png (matplotlib adds about a second to a run)."""

    @classmethod
    def from_toml(cls, path: Path) -> AudioConfig:
        """Read an `[audio]` table (or a top-level table) from a TOML file; unknown keys fail."""
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return cls.model_validate(doc.get("audio", doc))


@dataclass(frozen=True)
class CatalogueEntry:
    """One file to encode, with the credits the catalogue gives it."""

    file_id: int
    file: str
    """The file as the catalogue names it (relative to the catalogue or the scanned folder)."""
    path: Path
    title: str | None = None
    artist: str | None = None
    kind: str | None = None
    licence: str | None = None


@dataclass(frozen=True)
class Rejection:
    """A file that could not be encoded, and why, in words that say what to do."""

    file_id: int
    file: str
    reason: str
    message: str


@dataclass
class MonoAudio:
    """A decoded file: mono float32 at the target rate, before normalisation, plus its facts."""

    samples: np.ndarray  # (n,) float32 at the target rate
    source_rate: int
    source_channels: int
    frames: int
    format: str


@dataclass(frozen=True)
class EncodedFile:
    """The facts recorded for one encoded file (its codes go straight to the codes table)."""

    entry: CatalogueEntry
    format: str
    source_rate: int
    source_channels: int
    target_rate: int
    duration_s: float
    samples: int
    chunks: int
    peak: float
    snr_db: float
    note: str | None


@dataclass
class EncodeResult:
    """What the encode step produced: one row per encoded file and one per rejected file."""

    encoded: list[EncodedFile] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    decode_s: float = 0.0
    encode_s: float = 0.0

    @property
    def audio_s(self) -> float:
        """Seconds of source audio that were encoded."""
        return sum(e.duration_s for e in self.encoded)


@dataclass(frozen=True)
class AudioRunResult:
    """A published run: where it is, its tables, and its figures."""

    run_dir: Path
    catalogue: pa.Table
    rejected: pa.Table
    figures: tuple[Path, ...]

    @property
    def n_encoded(self) -> int:
        """Files that were encoded."""
        return self.catalogue.num_rows

    @property
    def n_rejected(self) -> int:
        """Files that were rejected."""
        return self.rejected.num_rows


class FileRejected(Exception):
    """Raised inside the per-file work; turned into a `Rejection` row, never escapes the job."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


# ---------------------------------------------------------------------------------------------
# Table contracts


CATALOGUE_SCHEMA = pa.schema([
    pa.field("file_id", pa.int32(), nullable=False),
    pa.field("file", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("licence", pa.string()),
    pa.field("format", pa.string(), nullable=False),
    pa.field("source_rate", pa.int32(), nullable=False),
    pa.field("source_channels", pa.int16(), nullable=False),
    pa.field("target_rate", pa.int32(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
    pa.field("samples", pa.int64(), nullable=False),
    pa.field("chunks", pa.int32(), nullable=False),
    pa.field("peak", pa.float32(), nullable=False),
    pa.field("snr_db", pa.float32(), nullable=False),
    pa.field("note", pa.string()),
])
"""One row per encoded file. `peak` is the absolute peak of the mono, resampled signal before
normalisation (full scale 1.0): multiply decoded audio by it to restore the original level."""

REJECTED_SCHEMA = pa.schema([
    pa.field("file_id", pa.int32(), nullable=False),
    pa.field("file", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
])
"""One row per file that could not be encoded; `reason` is one of missing, unsupported-format,
corrupt, empty, non-finite, silent, duplicate, or error (an unexpected failure, logged with its
traceback)."""


def codes_schema(channels: int = DEFAULT_CHANNELS) -> pa.Schema:
    """Schema of the `codes` table: one row per chunk of `chunk_samples` codes of one file."""
    value = pa.uint8() if code_dtype(channels) == np.uint8 else pa.uint16()
    return pa.schema([
        pa.field("file_id", pa.int32(), nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("codes", pa.list_(pa.field("item", value, nullable=False)), nullable=False),
    ])


def catalogue_table(encoded: Sequence[EncodedFile]) -> pa.Table:
    """The `catalogue` table, one row per encoded file, in file_id order."""
    rows = [{
        "file_id": e.entry.file_id, "file": e.entry.file, "title": e.entry.title,
        "artist": e.entry.artist, "kind": e.entry.kind, "licence": e.entry.licence,
        "format": e.format, "source_rate": e.source_rate, "source_channels": e.source_channels,
        "target_rate": e.target_rate, "duration_s": e.duration_s, "samples": e.samples,
        "chunks": e.chunks, "peak": e.peak, "snr_db": e.snr_db, "note": e.note,
    } for e in sorted(encoded, key=lambda e: e.entry.file_id)]
    return pa.Table.from_pylist(rows, schema=CATALOGUE_SCHEMA)


def rejected_table(rejected: Sequence[Rejection]) -> pa.Table:
    """The `rejected` table, one row per file that could not be encoded."""
    rows = [{"file_id": r.file_id, "file": r.file, "reason": r.reason, "message": r.message}
            for r in sorted(rejected, key=lambda r: r.file_id)]
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)


def chunk_table(file_id: int, codes: np.ndarray, chunk_samples: int, channels: int) -> pa.Table:
    """Split one file's codes into rows of `chunk_samples` (zero-copy list offsets)."""
    n = codes.size
    starts = np.arange(0, n, chunk_samples, dtype=np.int32)  # (chunks,)
    offsets = pa.array(np.append(starts, np.int32(n)), type=pa.int32())
    schema = codes_schema(channels)
    values = pa.array(codes)  # zero-copy; passing type= here makes pyarrow copy element-wise
    assert values.type == schema.field("codes").type.value_type, values.type
    return pa.Table.from_arrays([
        pa.array(np.full(starts.size, file_id, dtype=np.int32)),
        pa.array(np.arange(starts.size, dtype=np.int32)),
        pa.ListArray.from_arrays(offsets, values, type=schema.field("codes").type),
    ], schema=schema)


# ---------------------------------------------------------------------------------------------
# Finding the files


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def read_catalogue_csv(path: Path) -> list[CatalogueEntry]:
    """Entries of a catalogue CSV, in row order.

    It needs a `file` column (relative to the CSV's folder); `title`, `artist`, `kind` and
    `licence` (or `license`) are optional, and other columns are ignored.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    if "file" not in columns:
        raise DataError(
            f"{path}: a catalogue CSV needs a 'file' column (found {columns or 'no header'}); "
            "add a header row such as 'file,title,artist,licence'"
        )
    entries = []
    for i, raw in enumerate(reader):
        row = {(k or "").strip(): v for k, v in raw.items()}
        name = _clean(row.get("file")) or ""  # rejected later, with the row number
        entries.append(CatalogueEntry(
            file_id=i, file=name or f"{path.name}:{i + 2}", path=path.parent / name,
            title=_clean(row.get("title")),
            artist=_clean(row.get("artist")), kind=_clean(row.get("kind")),
            licence=_clean(row.get("licence") or row.get("license")),
        ))
    return entries


def scan_folder(folder: Path) -> list[CatalogueEntry]:
    """Every audio-looking file under `folder` (recursively, sorted, hidden files skipped).

    Credits come from `folder/catalog.csv` when present, matched by relative path and then by
    file stem (so `wav/x.wav` inherits the row of `x.ogg`); otherwise the title is the stem.
    """
    folder = Path(folder)
    wanted = SUPPORTED_SUFFIXES | OTHER_AUDIO_SUFFIXES
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in wanted
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    known: dict[str, CatalogueEntry] = {}
    if (folder / "catalog.csv").is_file():
        for e in read_catalogue_csv(folder / "catalog.csv"):
            known.setdefault(e.file, e)
            known.setdefault(Path(e.file).stem, e)
    entries = []
    for i, p in enumerate(files):
        rel = p.relative_to(folder).as_posix()
        meta = known.get(rel) or known.get(p.stem)
        if meta is None:
            entries.append(CatalogueEntry(file_id=i, file=rel, path=p, title=p.stem))
        else:
            entries.append(CatalogueEntry(file_id=i, file=rel, path=p, title=meta.title,
                                          artist=meta.artist, kind=meta.kind,
                                          licence=meta.licence))
    return entries


def load_catalogue(source: Path | None = None) -> list[CatalogueEntry]:
    """The files to encode: from a catalogue CSV, a folder scan, or the shipped default."""
    source = Path(source) if source is not None else DEFAULT_CATALOGUE
    if source.is_dir():
        return scan_folder(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; pass a folder of audio or a catalog.csv")
    if source.suffix.lower() == ".csv":
        return read_catalogue_csv(source)
    raise DataError(f"{source}: expected a folder of audio files or a catalogue .csv")


# ---------------------------------------------------------------------------------------------
# One file


class _Growable:
    """A float32 buffer filled block by block, doubling only if the size estimate was short."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, 1), dtype=np.float32)
        self._size = 0

    def append(self, block: np.ndarray) -> None:
        end = self._size + block.size
        if end > self._data.size:
            grown = np.empty(max(end, 2 * self._data.size), dtype=np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : end] = block
        self._size = end

    def view(self) -> np.ndarray:
        """The samples so far, (n,) float32, without copying."""
        return self._data[: self._size]


def load_mono(path: Path, config: AudioConfig) -> MonoAudio:
    """Decode `path` block by block, mix to mono and resample to `config.target_rate`.

    Only the resampled mono signal is kept whole (4 bytes per output sample); source-rate,
    multichannel audio exists one block at a time. Raises FileRejected for unusable files.
    """
    path = Path(path)
    if path.is_dir():
        raise FileRejected(MISSING, f"names a folder ({path}), not an audio file; fill in or "
                           "fix the catalogue's 'file' cell")
    if not path.exists():
        raise FileRejected(MISSING, "listed in the catalogue but not found at "
                           f"{path}; fix the path or remove the row")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise FileRejected(UNSUPPORTED, f"'{path.suffix}' files are not read (only Ogg Vorbis, "
                           "FLAC and WAV); convert it, e.g. `ffmpeg -i in.mp3 out.flac`")
    try:
        handle = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise FileRejected(CORRUPT, f"cannot be decoded as audio ({exc}); "
                           "re-export or replace the file") from None
    with handle:
        fmt = f"{handle.format}/{handle.subtype}"
        if handle.format not in SUPPORTED_FORMATS:
            raise FileRejected(UNSUPPORTED, f"holds {fmt} audio; only Ogg Vorbis, FLAC and WAV "
                               "are read: convert it")
        rate, n_channels, frames = int(handle.samplerate), int(handle.channels), handle.frames
        if frames <= 0 or rate <= 0:
            raise FileRejected(EMPTY, f"contains no audio ({frames} frames at {rate} Hz)")
        resampler = (None if rate == config.target_rate else soxr.ResampleStream(
            rate, config.target_rate, 1, dtype="float32", quality=config.resample_quality))
        # The output is written in place into one array sized from the header, so an hour of
        # audio peaks at one copy (230 MB at 16 kHz), not a list of blocks plus their concat.
        expected = -(-frames * config.target_rate // rate) + 64  # soxr may differ by a sample
        out = _Growable(expected)
        done = 0
        try:
            while True:
                block = handle.read(config.read_frames, dtype="float32", always_2d=True)
                if not len(block):
                    break
                bad = ~np.isfinite(block)  # (frames, channels)
                if bad.any():
                    frame, ch = np.argwhere(bad)[0]
                    raise FileRejected(NON_FINITE, f"sample {done + frame} of channel {ch} is "
                                       f"{block[frame, ch]}; the file is damaged: re-export it")
                mono = block[:, 0] if n_channels == 1 else block.mean(axis=1, dtype=np.float32)
                out.append(mono if resampler is None else resampler.resample_chunk(mono))
                done += len(block)
        except sf.LibsndfileError as exc:
            raise FileRejected(CORRUPT, f"decoding failed after {done} frames ({exc}); "
                               "the file is truncated or damaged") from None
        if resampler is not None:
            out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = out.view()
    if done == 0 or samples.size == 0:
        raise FileRejected(EMPTY, f"contains no decodable audio ({frames} frames announced)")
    if done < frames:
        log.warning("%s: decoded %d of the %d frames its header announces", path, done, frames)
    return MonoAudio(samples, rate, n_channels, done, fmt)


def normalise_peak(samples: np.ndarray, silence_peak: float) -> float:
    """Scale `samples` in place so that their absolute peak is 1; return the original peak.

    A file whose peak is below `silence_peak` is rejected as silent rather than encoded as
    all-128: there is nothing to normalise, and scaling a noise floor up to full scale would
    teach a model that hiss is music.
    """
    step = 1 << 20  # blockwise: no full-size temporary
    peak = max((float(np.abs(samples[i : i + step]).max()) for i in range(0, samples.size, step)),
               default=0.0)
    if peak < silence_peak:
        raise FileRejected(SILENT, f"peak {peak:.2e} is below silence_peak {silence_peak:.0e} "
                           "(about -80 dBFS): nothing to encode; drop the file or lower "
                           "silence_peak")
    np.multiply(samples, np.float32(1.0 / peak), out=samples)
    return peak


def encode_entry(
    entry: CatalogueEntry, config: AudioConfig, writer: pq.ParquetWriter | None = None
) -> tuple[EncodedFile, float, float]:
    """Decode, normalise and encode one file; append its chunks to `writer`.

    Returns the catalogue facts plus (decode seconds, encode seconds). Raises FileRejected.
    """
    t0 = time.perf_counter()
    audio = load_mono(entry.path, config)
    t1 = time.perf_counter()
    peak = normalise_peak(audio.samples, config.silence_peak)
    codes = mu_law_encode(audio.samples, config.channels)  # (n,) uint8
    snr = round_trip_snr_db(audio.samples, config.channels, codes=codes)
    chunks = -(-codes.size // config.chunk_samples)
    if writer is not None:
        writer.write_table(chunk_table(entry.file_id, codes, config.chunk_samples,
                                       config.channels))
    t2 = time.perf_counter()
    notes = []
    if audio.source_channels > 1:
        notes.append(f"mixed {audio.source_channels} channels to mono")
    if audio.source_rate < config.target_rate:
        notes.append(f"upsampled from {audio.source_rate} Hz: no content above "
                     f"{audio.source_rate // 2} Hz")
    facts = EncodedFile(
        entry=entry, format=audio.format, source_rate=audio.source_rate,
        source_channels=audio.source_channels, target_rate=config.target_rate,
        duration_s=audio.frames / audio.source_rate, samples=int(codes.size), chunks=chunks,
        peak=peak, snr_db=snr, note="; ".join(notes) or None,
    )
    return facts, t1 - t0, t2 - t1


# ---------------------------------------------------------------------------------------------
# The job's steps (the flow wraps each as a task)


@contextlib.contextmanager
def open_run(root: Path, run_id: str | None = None, *, wait_s: float = 0.0) -> Iterator[RunFolder]:
    """Lock the output root, clear crashed runs, and yield a fresh staging folder.

    The folder is removed again if the body raises; `publish_run` makes it visible.
    """
    root = Path(root)
    with output_lock(root, wait_s=wait_s):
        for stale in clean_stale(root):
            log.info("removed %s left by a crashed run", stale)
        run = RunFolder(root, run_id or new_run_id()).create()
        try:
            yield run
        except BaseException:
            run.discard()
            raise


FileCallback = Callable[[int, int], None]
"""Called after each file as (files done, files in all), e.g. to update a progress artifact."""


@contextlib.contextmanager
def _file_bar(entries: Sequence[CatalogueEntry], enabled: bool) -> Iterator[Any]:
    """A tqdm bar over the files (log lines print above it), or the plain entries."""
    if not enabled:
        yield entries
        return
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(entries, desc="audio encode", unit="file",
                                       dynamic_ncols=True) as bar:
        yield bar


def encode_catalogue(
    entries: Sequence[CatalogueEntry], config: AudioConfig, run: RunFolder, *,
    progress: bool = False, on_file: FileCallback | None = None,
) -> EncodeResult:
    """Encode every entry, streaming codes into `audio/codes.parquet`, one row group per file.

    A file that cannot be encoded becomes a `Rejection` and the others go on. `progress`
    shows a tqdm bar over the files; `on_file(done, total)` is called after each one.
    """
    result = EncodeResult()
    seen: set[Path] = set()
    with atomic_path(run.path(TOPIC, "codes.parquet")) as tmp, \
            pq.ParquetWriter(tmp, codes_schema(config.channels), compression="zstd") as writer, \
            _file_bar(entries, progress) as bar:
        for done, entry in enumerate(bar, start=1):
            if on_file is not None and done > 1:
                on_file(done - 1, len(entries))
            try:
                key = entry.path.resolve()
                if key in seen:
                    raise FileRejected(DUPLICATE, "listed more than once; encoded the first time")
                seen.add(key)
                facts, decode_s, encode_s = encode_entry(entry, config, writer)
            except FileRejected as exc:
                log.warning("rejected %s: %s: %s", entry.file, exc.reason, exc.message)
                result.rejected.append(Rejection(entry.file_id, entry.file, exc.reason,
                                                 exc.message))
                continue
            except Exception as exc:  # one bad file must not sink the catalogue
                log.exception("failed on %s", entry.file)
                result.rejected.append(Rejection(entry.file_id, entry.file, FAILED,
                                                 f"{type(exc).__name__}: {exc}"))
                continue
            result.encoded.append(facts)
            result.decode_s += decode_s
            result.encode_s += encode_s
            log.info("encoded %s: %d samples at %d Hz, peak %.3f, SNR %.1f dB", entry.file,
                     facts.samples, facts.target_rate, facts.peak, facts.snr_db)
    if on_file is not None:
        on_file(len(entries), len(entries))
    run.write_table("catalogue", catalogue_table(result.encoded), subdir=TOPIC)
    run.write_table("rejected", rejected_table(result.rejected), subdir=TOPIC)
    return result


def render_figures(result: EncodeResult, config: AudioConfig, run: RunFolder) -> list[Path]:
    """Draw companding.png and, when a file encoded, waveform.png (before and after)."""
    if not config.figures:
        return []
    paths = [write_bytes_atomic(companding_png(config.channels), run.path(TOPIC,
                                                                          "companding.png"))]
    chosen = [e for e in result.encoded if config.plot_file in (None, e.entry.file)]
    if chosen:
        entry = chosen[0].entry
        audio = load_mono(entry.path, config)
        normalise_peak(audio.samples, config.silence_peak)
        png = waveform_png(audio.samples, config.target_rate, config.channels,
                           entry.title or entry.file)
        paths.append(write_bytes_atomic(png, run.path(TOPIC, "waveform.png")))
    return paths


def publish_run(
    run: RunFolder, result: EncodeResult, config: AudioConfig, source: Path | None
) -> AudioRunResult:
    """Write the manifest and rename the staging folder to runs/<run_id> (never `latest`)."""
    folder = run.path(TOPIC)
    manifest: dict[str, Any] = {
        "run_id": run.run_id,
        "topic": TOPIC,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(source) if source is not None else "shipped catalogue (default)",
        "config": config.model_dump(),
        "encoded": len(result.encoded),
        "rejected": len(result.rejected),
        "audio_seconds": round(result.audio_s, 3),
        "decode_seconds": round(result.decode_s, 3),
        "encode_seconds": round(result.encode_s, 3),
        "files": sorted(p.relative_to(run.staging).as_posix() for p in folder.iterdir()
                        if not p.name.startswith(".")),
    }
    final = run.publish(manifest, update_latest=False).absolute()  # copyable from anywhere
    audio_dir = final / TOPIC
    return AudioRunResult(
        run_dir=final,
        catalogue=pq.read_table(audio_dir / "catalogue.parquet"),
        rejected=pq.read_table(audio_dir / "rejected.parquet"),
        figures=tuple(sorted(audio_dir.glob("*.png"))),
    )


def run_audio_catalogue(
    source: Path | None = None,
    config: AudioConfig | None = None,
    root: Path = Path("."),
    run_id: str | None = None,
    *,
    progress: bool = False,
) -> AudioRunResult:
    """The whole job without Prefect: list, encode, draw, publish under root/runs/<id>/audio/.

    `progress` shows a tqdm bar over the files.
    """
    config = config or AudioConfig()
    entries = load_catalogue(source)
    with open_run(root, run_id) as run:
        result = encode_catalogue(entries, config, run, progress=progress)
        render_figures(result, config, run)
        return publish_run(run, result, config, source)


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib with the Agg backend, imported lazily)


def _figure_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def companding_png(channels: int = DEFAULT_CHANNELS) -> bytes:
    """The companding curve f(x) with its quantised codes, and the step size vs. linear PCM."""
    plt = _pyplot()
    mu = channels - 1
    x = np.linspace(-1.0, 1.0, 4001)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, mu_law_compand(x, channels), lw=1.5, label="f(x) = sign(x) ln(1+μ|x|)/ln(1+μ)")
    left.step(x, mu_law_encode(x.astype(np.float32), channels) / mu * 2 - 1, where="mid",
              lw=0.8, alpha=0.8, label=f"code / μ · 2 − 1 ({channels} codes)")
    left.plot(x, x, ":", color="grey", lw=1, label="linear")
    left.set(xlabel="sample x", ylabel="companded y", title=f"Mu-law companding, μ = {mu}")
    left.legend(fontsize=8, loc="upper left")
    left.grid(alpha=0.3)
    levels = decode_table(channels).astype(np.float64)
    pos = levels[levels > 0]
    right.loglog(pos[1:], np.diff(pos), ".", ms=3, label=f"mu-law, {channels} codes")
    right.axhline(2.0 / mu, color="C1", lw=1, label=f"linear, {channels} codes")
    right.set(xlabel="|x| (log)", ylabel="quantisation step (log)",
              title="Fine steps for quiet samples, coarse for loud")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    return _figure_bytes(fig)


def _envelope(x: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bucket index, min, max) of `x` in about `buckets` equal slices, so peaks survive."""
    size = max(1, x.size // buckets)
    n = x.size // size * size
    view = x[:n].reshape(-1, size)  # (buckets, size)
    return np.arange(view.shape[0]) * size, view.min(axis=1), view.max(axis=1)


def waveform_png(samples: np.ndarray, rate: int, channels: int, title: str) -> bytes:
    """One file before and after the round trip: the whole waveform and a 20 ms close-up."""
    plt = _pyplot()
    codes = mu_law_encode(samples, channels)
    decoded = mu_law_decode(codes, channels)
    error = samples - decoded  # (n,)
    snr = round_trip_snr_db(samples, channels, codes=codes)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5))
    at, lo, hi = _envelope(samples, 2000)
    top.fill_between(at / rate, lo, hi, lw=0, color="C0", label="normalised input (min/max)")
    at, lo, hi = _envelope(error * 10, 2000)
    top.fill_between(at / rate, lo, hi, lw=0, color="C3", alpha=0.8, label="round-trip error x10")
    top.set(xlabel="seconds", ylabel="amplitude", title=f"{title}: SNR {snr:.1f} dB")
    top.legend(fontsize=8, loc="upper right")
    centre, half = int(np.argmax(np.abs(samples))), int(0.01 * rate)
    a, b = max(0, centre - half), min(samples.size, centre + half)
    ms = np.arange(b - a) / rate * 1e3
    bottom.plot(ms, samples[a:b], lw=1.4, label="before (normalised input)")
    bottom.step(ms, decoded[a:b], where="mid", lw=0.9, label=f"after ({channels}-code mu-law)")
    bottom.plot(ms, error[a:b] * 10, lw=0.8, color="C3", label="error x10")
    bottom.set(xlabel=f"milliseconds after {a / rate:.3f} s", ylabel="amplitude",
               title="20 ms around the loudest sample")
    bottom.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _figure_bytes(fig)
