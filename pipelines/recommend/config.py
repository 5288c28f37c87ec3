"""The nightly job's configuration: one frozen pydantic model per TOML section."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.errors import ConfigError
from models.als import AlsConfig
from models.ease import EaseConfig
from models.neighbours import PearsonConfig
from pipelines import candidates as cand
from pipelines import diversify as div
from pipelines import ingest, offline
from pipelines import ranking as rk
from pipelines.recommend.dask_engine import EngineConfig


class UserNeighboursConfig(PearsonConfig):
    """User-based Pearson settings (rows are users)."""

    k: int = Field(50, ge=1)
    """Neighbours kept per user."""
    min_support: int = Field(5, ge=1)
    """Least number of co-rated items for a similarity to exist."""


class ItemNeighboursConfig(PearsonConfig):
    """Item-based Pearson settings (rows are items).

    Defaults chosen on validation splits (never test): significance shrinkage lambda = 200
    and min_support 5 lift item-Pearson's validation recall@100 on ML-1M from 0.062 to 0.217.
    `flows/configs/lecture-notes.toml` keeps the notes' formula (lambda = 0, min_support 2).
    """

    k: int = Field(50, ge=1)
    """Neighbours kept per item."""
    min_support: int = Field(5, ge=1)
    """Least number of users who rated both items for a similarity to exist."""
    shrinkage: float = Field(200.0, ge=0.0)
    """lambda in w * n / (n + lambda): damps weights resting on few co-raters."""


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


class ShardConfig(BaseModel):
    """How users are split into shards for candidates, features, scoring and diversity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(500, ge=1)
    """Users per shard: peak memory grows with this (times candidates per user, times the two
    shards a local run works on at once), not with the number of users. The output does not
    depend on it. 500: on ML-1M users 1-2999 and the books-shaped set as fast as 1,000, at
    0.1-0.3 GB less peak memory."""


class RunConfig(BaseModel):
    """Everything one nightly run needs; read from TOML, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: ingest.SourceConfig = Field(default_factory=ingest.SourceConfig)
    """The interactions and item metadata to read (default: the embedded MovieLens data)."""
    user_neighbours: UserNeighboursConfig = Field(default_factory=UserNeighboursConfig)
    """User-based Pearson settings."""
    item_neighbours: ItemNeighboursConfig = Field(default_factory=ItemNeighboursConfig)
    """Item-based Pearson settings (defaults tuned on validation; see lecture-notes.toml)."""
    als: AlsConfig = Field(default_factory=AlsConfig)
    """ALS candidate source."""
    candidates: cand.CandidatesConfig = Field(default_factory=cand.CandidatesConfig)
    """How many candidates each source proposes."""
    ease: EaseConfig = Field(default_factory=EaseConfig)
    """EASE settings (the `ease` candidate source)."""
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
    shards: ShardConfig = Field(default_factory=ShardConfig)
    """User shards (memory bound)."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """Output folder settings."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Where the stages and their shards run (one process, Prefect tasks, a Dask cluster)."""

    def candidate_settings(self) -> rk.CandidateSettings:
        """The candidate-generation part of this config."""
        return rk.CandidateSettings(
            user_neighbours=self.user_neighbours, item_neighbours=self.item_neighbours,
            als=self.als, candidates=self.candidates)

    @classmethod
    def from_toml(cls, path: Path, output_root: Path | None = None) -> RunConfig:
        """Read a TOML config; relative paths in [source] are taken from the file's folder.

        A relative `[output] root` in the file is taken from the file's folder as well;
        `output_root` (the CLI's --output) overrides it and is taken as given (relative to
        the working directory).
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (or is not a file)")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        cfg = cls.from_dict(raw, base=path.parent.resolve(), origin=str(path))
        if output_root is not None:
            cfg = cfg.model_copy(update={"output": cfg.output.model_copy(
                update={"root": Path(output_root)})})
        return cfg

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


def section(cfg: RunConfig, dotted: str) -> Any:
    """The JSON form of one config section or field, e.g. 'ranker.model'."""
    value: Any = cfg.model_dump(mode="json")
    for part in dotted.split("."):
        value = value[part]
    return value
