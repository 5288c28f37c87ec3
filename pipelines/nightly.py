"""The nightly recommendation job as named stages over tables, runnable without any orchestrator."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.errors import ConfigError, DataWarning
from models.als import AlsConfig
from models.neighbours import PearsonConfig
from pipelines import candidates as cand
from pipelines import diversify as div
from pipelines import embeddings, ingest, neighbours, offline
from pipelines import ranking as rk
from pipelines.store import (
    RunFolder,
    atomic_path,
    clean_stale,
    fault_point,
    link_or_copy,
    new_run_id,
    output_lock,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


class OutputConfig(BaseModel):
    """Where runs are written and how many are kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path = Path(".")
    """Output root: runs go to <root>/runs/<run_id>/, the newest good one is <root>/runs/latest."""
    keep_runs: int = Field(10, ge=1)
    """Published recommendation runs kept; older ones are deleted after a successful publish."""
    lock_wait_s: float = Field(0.0, ge=0.0)
    """How long a run waits for another run on the same root to finish (0 = fail fast)."""
    cache: bool = True
    """Reuse a stage's outputs from an earlier attempt when its config, code and inputs are
    unchanged (a rerun after a crash, or twice the same night, skips finished stages)."""


class RunConfig(BaseModel):
    """Everything one nightly run needs; read from TOML, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: ingest.SourceConfig = Field(default_factory=ingest.SourceConfig)
    """The interactions and item metadata to read (default: the embedded MovieLens data)."""
    user_neighbours: PearsonConfig = Field(default_factory=lambda: PearsonConfig(
        k=50, min_support=5))
    """User-based Pearson settings."""
    item_neighbours: PearsonConfig = Field(default_factory=lambda: PearsonConfig(
        k=50, min_support=2))
    """Item-based Pearson settings (defaults: the lecture notes' formula, lambda = 0)."""
    als: AlsConfig = Field(default_factory=AlsConfig)
    """ALS candidate source."""
    candidates: cand.CandidatesConfig = Field(default_factory=cand.CandidatesConfig)
    """How many candidates each source proposes."""
    ranking: Literal["lightgbm", "fusion"] = "lightgbm"
    """How candidates are ordered before the diversity re-ranker: the LightGBM ranker trained
    on a time split of tonight's data, or reciprocal-rank fusion (the fallback)."""
    ranker: rk.RankingConfig = Field(default_factory=rk.RankingConfig)
    """LightGBM ranker settings."""
    fusion: div.FusionConfig = Field(default_factory=div.FusionConfig)
    """Reciprocal-rank fusion settings."""
    diversify: div.DiversifyConfig = Field(default_factory=div.DiversifyConfig)
    """List length and author cap."""
    evaluation: offline.EvaluationConfig = Field(default_factory=offline.EvaluationConfig)
    """The offline evaluation stage (protocol in README 'Offline evaluation')."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """Output folder settings."""

    def candidate_settings(self) -> rk.CandidateSettings:
        """The candidate-generation part of this config."""
        return rk.CandidateSettings(
            user_neighbours=self.user_neighbours, item_neighbours=self.item_neighbours,
            als=self.als, candidates=self.candidates)

    @classmethod
    def from_toml(cls, path: Path) -> RunConfig:
        """Read a TOML config; relative paths in [source] are taken from the file's folder."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (or is not a file)")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(raw, base=path.parent.resolve(), origin=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Path = Path("."), origin: str = "config"
                  ) -> RunConfig:
        """Validate a config mapping; relative paths (source files, output root) are from `base`."""
        raw = dict(raw)
        src = dict(raw.get("source", {}))
        if "preset" in src:
            name, folder = src.pop("preset"), base / src.pop("folder", ".")
            src = ingest.preset_source(str(name), folder, **src).model_dump()
        elif src:
            src = _resolve_paths(src, base)
        if src:
            raw["source"] = src
        if isinstance(raw.get("output"), dict) and "root" in raw["output"]:
            raw["output"] = {**raw["output"], "root": base / raw["output"]["root"]}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: {_explain(exc)}") from exc


def _resolve_paths(src: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(src)
    if "path" in out:
        out["path"] = base / out["path"]
    if "items" in out:
        out["items"] = [{**it, "path": base / it["path"]} if "path" in it else it
                        for it in out["items"]]
    return out


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r} (check its spelling against the config reference)")
        else:
            parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


Tables = Mapping[str, pa.Table]


@dataclass(frozen=True)
class Stage:
    """A pure function from named input tables to named output tables."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    fn: Callable[[Tables, RunConfig], dict[str, Any]]
    """Returns one Arrow table per name in `writes`, plus optional files (name -> bytes)."""


def _ingest(_: Tables, cfg: RunConfig) -> dict[str, pa.Table]:
    res = ingest.ingest(cfg.source)
    return {"interactions": res.interactions, "items": res.items, "rejected": res.rejected}


def _user_nbrs(t: Tables, cfg: RunConfig) -> dict[str, pa.Table]:
    return {"user_neighbours": neighbours.user_neighbours(t["interactions"], cfg.user_neighbours)}


def _item_nbrs(t: Tables, cfg: RunConfig) -> dict[str, pa.Table]:
    return {"item_neighbours": neighbours.item_neighbours(t["interactions"], cfg.item_neighbours)}


def _als(t: Tables, cfg: RunConfig) -> dict[str, pa.Table]:
    users, items = embeddings.als_factors(t["interactions"], cfg.als)
    return {"user_factors": users, "item_factors": items}


def _candidates(t: Tables, cfg: RunConfig) -> dict[str, pa.Table]:
    return {"candidates": cand.generate(
        t["interactions"], t["items"], t["user_neighbours"], t["item_neighbours"],
        t["user_factors"], t["item_factors"], cfg.candidates)}


def _rank(t: Tables, cfg: RunConfig) -> dict[str, Any]:
    if cfg.ranking == "fusion":
        return {"scored": div.fuse(t["candidates"], cfg.fusion)}
    settings = cfg.candidate_settings()
    try:
        model = rk.fit_ranker(t["interactions"], t["items"], settings, cfg.ranker)
    except rk.TooLittleData as exc:
        warnings.warn(f"ranker not trained ({exc}); ordering by fusion instead", DataWarning,
                      stacklevel=2)
        return {"scored": div.fuse(t["candidates"], cfg.fusion)}
    cs = rk.CandidateSet(t["candidates"], t["user_neighbours"], t["item_neighbours"],
                              t["user_factors"], t["item_factors"])
    feats = rk.features_for(cs, t["interactions"], t["items"], settings)
    return {"scored": rk.score(model, feats, t["candidates"]),
            "ranker.json": json.dumps(model.to_dict()).encode()}


def _diversify(t: Tables, cfg: RunConfig) -> dict[str, pa.Table]:
    return {"recommendations": div.diversify(t["scored"], t["items"], cfg.diversify)}


def _evaluate(t: Tables, cfg: RunConfig) -> dict[str, Any]:
    ev = offline.evaluate_models(
        t["interactions"], t["items"], cfg.candidate_settings(), cfg.ranker, cfg.fusion,
        cfg.diversify, cfg.evaluation.split)
    return {"evaluation": ev.table, "evaluation.md": ev.report.encode()}


INGEST = Stage("ingest", (), ("interactions", "items", "rejected"), _ingest)
USER_NEIGHBOURS = Stage("user_neighbours", ("interactions",), ("user_neighbours",), _user_nbrs)
ITEM_NEIGHBOURS = Stage("item_neighbours", ("interactions",), ("item_neighbours",), _item_nbrs)
ALS = Stage("als", ("interactions",), ("user_factors", "item_factors"), _als)
CANDIDATES = Stage(
    "candidates",
    ("interactions", "items", "user_neighbours", "item_neighbours", "user_factors",
     "item_factors"),
    ("candidates",), _candidates)
RANK = Stage(
    "rank",
    ("interactions", "items", "candidates", "user_neighbours", "item_neighbours",
     "user_factors", "item_factors"),
    ("scored",), _rank)
DIVERSIFY = Stage("diversify", ("scored", "items"), ("recommendations",), _diversify)
EVALUATE = Stage("evaluate", ("interactions", "items"), ("evaluation",), _evaluate)

STAGES: tuple[Stage, ...] = (
    INGEST, USER_NEIGHBOURS, ITEM_NEIGHBOURS, ALS, CANDIDATES, RANK, DIVERSIFY, EVALUATE)
PARALLEL = (USER_NEIGHBOURS, ITEM_NEIGHBOURS, ALS)  # independent given `interactions`


@dataclass(frozen=True)
class StageReport:
    """What one stage did: rows written per table, seconds taken, whether it was reused."""

    stage: str
    rows: dict[str, int]
    seconds: float
    cached: bool = False


def read_table(run: RunFolder, name: str) -> pa.Table:
    """A table written earlier in this run (from the staging folder)."""
    return pq.read_table(run.path(f"{name}.parquet"))


def execute(stage: Stage, run: RunFolder, cfg: RunConfig) -> StageReport:
    """Read a stage's inputs from the run folder, run it, check and write its outputs.

    With `output.cache` on, a stage whose key (its config, the code, and the keys of the stages
    that produced its inputs) matches a finished earlier attempt is not recomputed: its files
    are linked from `<root>/cache/<stage>/<key>/` into this run.
    """
    start = time.perf_counter()
    key = stage_key(stage, cfg)
    cache = cfg.output.root / "cache" / stage.name / key
    if cfg.output.cache and (cache / "done.json").is_file():
        done = json.loads((cache / "done.json").read_text())
        for name in done["files"]:
            link_or_copy(cache / name, run.path(name))
        log.info("stage %s: unchanged inputs, reused cache %s", stage.name, key[:12])
        return StageReport(stage.name, done["rows"], round(time.perf_counter() - start, 3),
                           cached=True)
    inputs = {name: read_table(run, name) for name in stage.reads}
    outputs = stage.fn(inputs, cfg)
    files = {k: v for k, v in outputs.items() if isinstance(v, bytes)}
    outputs = {k: v for k, v in outputs.items() if k not in files}
    if stray := set(outputs) ^ set(stage.writes):
        raise RuntimeError(f"stage {stage.name}: outputs differ from its contract by {stray}")
    written = []
    for n, name in enumerate(stage.writes):
        written.append(run.write_table(name, outputs[name]).name)
        if n == 0:
            fault_point(stage.name)  # crash tests kill the process here, mid-stage
    for name, data in files.items():
        written.append(write_bytes_atomic(data, run.path(name)).name)
    if stage is INGEST:
        written.append(write_warehouse(run, outputs).name)
    seconds = time.perf_counter() - start
    rows = {name: outputs[name].num_rows for name in stage.writes}
    if cfg.output.cache:
        store_cache(cache, run, written, rows)
    log.info("stage %s: %s in %.2f s", stage.name, rows, seconds)
    return StageReport(stage.name, rows, round(seconds, 3))


def store_cache(cache: Path, run: RunFolder, files: list[str], rows: dict[str, int]) -> None:
    """Link a finished stage's files into its cache folder; `done.json` is written last."""
    tmp = cache.with_name(f".{cache.name}.{new_run_id()}.tmp")
    for name in files:
        link_or_copy(run.path(name), tmp / name)
    write_json_atomic({"files": files, "rows": rows}, tmp / "done.json")
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)


# Config sections that shape each stage's output (besides its inputs' keys and the code).
STAGE_CONFIG: dict[str, tuple[str, ...]] = {
    "ingest": ("source",), "user_neighbours": ("user_neighbours",),
    "item_neighbours": ("item_neighbours",), "als": ("als",),
    "candidates": ("candidates",),
    "rank": ("ranking", "ranker", "fusion", "user_neighbours", "item_neighbours", "als",
             "candidates"),
    "diversify": ("diversify",),
    "evaluate": ("evaluation", "ranker", "fusion", "diversify", "user_neighbours",
                 "item_neighbours", "als", "candidates"),
}


def stage_key(stage: Stage, cfg: RunConfig) -> str:
    """Content key of a stage's output: a Merkle hash over config, code and upstream keys."""
    producers = {name: s for s in STAGES for name in s.writes}
    digest = hashlib.sha256()
    digest.update(stage.name.encode())
    digest.update(code_version().encode())
    dumped = cfg.model_dump(mode="json")
    digest.update(json.dumps({k: dumped[k] for k in STAGE_CONFIG[stage.name]},
                             sort_keys=True).encode())
    if stage is INGEST:
        digest.update(json.dumps(fingerprint(cfg), sort_keys=True).encode())
    for name in sorted({producers[r].name for r in stage.reads}):
        digest.update(stage_key(next(s for s in STAGES if s.name == name), cfg).encode())
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """Hash of the product's own source: a code change invalidates every cached stage."""
    digest = hashlib.sha256()
    for package in ("features", "models", "pipelines"):
        for path in sorted((REPO / package).rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def write_warehouse(run: RunFolder, tables: Tables) -> Path:
    """Store the ingested tables in a DuckDB database file (`warehouse.duckdb`) in the run."""
    target = run.path("warehouse.duckdb")
    with atomic_path(target) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for name, table in tables.items():
                con.register(f"{name}_arrow", table)
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
            con.execute("CHECKPOINT")
        finally:
            con.close()
    return target


def fingerprint(cfg: RunConfig) -> dict[str, str]:
    """sha256 of every input file (the data fingerprint in the manifest)."""
    out = {}
    ingest.check_file(cfg.source.path, "interactions")  # the same clear errors as ingest
    for item in cfg.source.items:
        ingest.check_file(item.path, "items")
    for path in [cfg.source.path, *(it.path for it in cfg.source.items)]:
        stat = Path(path).stat()
        out[str(path)] = _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    return out


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached per (path, size, mtime).

    Every stage key and the manifest ask for it, and input files can be large.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the results."""
    out = {"python": platform.python_version()}
    for pkg in ("recsys-nightly", "prefect", "polars", "implicit", "lightgbm", "duckdb",
                "pyarrow", "numpy", "scipy", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class RunResult:
    """A published run: where it is and what each stage did."""

    run_id: str
    path: Path
    reports: list[StageReport] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def manifest_for(run: RunFolder, cfg: RunConfig, reports: list[StageReport],
                 started: datetime) -> dict[str, Any]:
    """The manifest written last into a run: config, fingerprint, counts, timings, versions."""
    rejected = read_table(run, "rejected")
    return {
        "run_id": run.run_id,
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "data_fingerprint": fingerprint(cfg),
        "rows": {k: v for r in reports for k, v in r.rows.items()},
        "seconds": {r.stage: r.seconds for r in reports},
        "rejected_rows": rejected.num_rows,
        "versions": versions(),
    }


def prune_runs(root: Path, keep: int) -> list[Path]:
    """Delete the oldest published runs beyond `keep` (never the one `latest` points at)."""
    runs_dir = root / "runs"
    latest = (runs_dir / "latest").resolve() if (runs_dir / "latest").exists() else None
    published = sorted(p for p in runs_dir.iterdir()
                       if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                       and (p / "manifest.json").exists() and (p / "recommendations.parquet")
                       .exists())
    doomed = [p for p in published[:-keep] if p != latest] if len(published) > keep else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _by_name(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def prune_cache(root: Path, keep: set[str]) -> None:
    """After a publish, drop cached stage outputs other than this run's (and crash leftovers)."""
    cache = root / "cache"
    if not cache.is_dir():
        return
    for entry in cache.glob("*/*"):
        if f"{entry.parent.name}/{entry.name}" not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def run_nightly(cfg: RunConfig, run_id: str | None = None, *, evaluate_only: bool = False
                ) -> RunResult:
    """Run every stage in order and publish, without Prefect (tests, scripts, debugging)."""
    return run_with(cfg, run_id, lambda stage, run: execute(stage, run, cfg),
                    evaluate_only=evaluate_only)


def run_with(cfg: RunConfig, run_id: str | None,
             call: Callable[[Stage, RunFolder], StageReport],
             parallel: Callable[[list[Stage], RunFolder], list[StageReport]] | None = None,
             *, evaluate_only: bool = False) -> RunResult:
    """Lock the output root, run the stages through `call`, publish, prune old runs.

    `parallel` runs the independent stages together (the flow submits them as tasks); by
    default they run one after another. Any failure discards the staging folder, so nothing is
    published and `runs/latest` keeps pointing at the last good run. `evaluate_only` runs just
    ingest and the evaluation, and publishes without moving `runs/latest`.
    """
    root = cfg.output.root
    started = datetime.now(UTC)
    with output_lock(root, wait_s=cfg.output.lock_wait_s):
        clean_stale(root)
        run = RunFolder(root, run_id or new_run_id(started)).create()
        try:
            reports = [call(INGEST, run)]
            if not evaluate_only:
                group = list(PARALLEL)
                reports += parallel(group, run) if parallel else [call(s, run) for s in group]
                for stage in (CANDIDATES, RANK, DIVERSIFY):
                    reports.append(call(stage, run))
            if evaluate_only or cfg.evaluation.enabled:
                reports.append(call(EVALUATE, run))
            manifest = manifest_for(run, cfg, reports, started)
            path = run.publish(manifest, update_latest=not evaluate_only)
        except BaseException:
            run.discard()
            raise
        prune_runs(root, cfg.output.keep_runs)
        prune_cache(root, {f"{r.stage}/{stage_key(_by_name(r.stage), cfg)}" for r in reports})
    return RunResult(run.run_id, path, reports, manifest)
