"""Ingest: raw interaction and item files into a DuckDB database, validated at the edge."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.columns import AUTHOR, AUTHOR_ID, ITEM_ID, TITLE, TS, USER_ID, WEIGHT
from features.errors import ConfigError, DataError, DataWarning
from features.resources import data_path
from features.vocab import normalize_name

log = logging.getLogger(__name__)

EMBEDDED = data_path("movielens-small")

FileFormat = Literal["auto", "csv", "tsv", "dat", "parquet"]
DuplicateRule = Literal["last", "first", "sum", "max", "mean"]

INTERACTIONS_SCHEMA = pa.schema([
    pa.field(USER_ID, pa.string(), nullable=False),
    pa.field(ITEM_ID, pa.string(), nullable=False),
    pa.field(WEIGHT, pa.float64(), nullable=False),
    pa.field(TS, pa.timestamp("us", tz="UTC"), nullable=True),
])
ITEMS_SCHEMA = pa.schema([
    pa.field(ITEM_ID, pa.string(), nullable=False),
    pa.field(TITLE, pa.string(), nullable=True),
    pa.field(AUTHOR_ID, pa.string(), nullable=False),
    pa.field(AUTHOR, pa.string(), nullable=True),
])
REJECTED_SCHEMA = pa.schema([
    pa.field("file", pa.string(), nullable=False),
    pa.field("line", pa.int64(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("raw", pa.string(), nullable=True),
])


EMBEDDED_SOURCE: dict[str, object] = dict(
    path=EMBEDDED / "ratings.parquet", user="user_id", item="movie_id", weight="rating",
    timestamp="timestamp",
    items=[dict(path=EMBEDDED / "movies.parquet", item="movie_id", title="title",
                author="director_id")],
)
"""The embedded MovieLens data's mapping: what `SourceConfig()` without a `path` reads."""


class FileSpec(BaseModel):
    """How to read one delimited or Parquet file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    """The file (CSV, TSV, `::`-separated .dat, Parquet; .gz is decompressed transparently)."""
    format: FileFormat = "auto"
    """File type; `auto` decides from the extension (.parquet, .tsv, .dat -> `::`, else CSV)."""
    delimiter: str | None = None
    """Field separator override (e.g. `|` for ml-100k's u.item)."""
    header: bool = True
    """Whether the first line names the columns; without one, give `names`."""
    names: list[str] | None = None
    """Column names for a file without a header, in file order."""
    encoding: Literal["utf-8", "latin-1", "utf-16"] = "utf-8"
    """Text encoding of CSV-like files."""
    quote: str = '"'
    """Quote character of CSV-like files; empty for files that never quote (raw TSV dumps)."""

    def resolved_format(self) -> str:
        """The format, with `auto` resolved from the file name."""
        if self.format != "auto":
            return self.format
        name = self.path.name.lower().removesuffix(".gz")
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith(".tsv"):
            return "tsv"
        if name.endswith(".dat"):
            return "dat"
        return "csv"


class ItemsFile(FileSpec):
    """An item-metadata file: item id plus title and/or author columns."""

    item: str = "item_id"
    """Column holding the item id (must match the interactions' item ids)."""
    title: str | None = None
    """Column holding the item title, if this file has one."""
    author: str | None = None
    """Column holding the author (director, artist, writer) id or name, if this file has one."""
    normalize_authors: bool = True
    """Derive `author_id` from the author by `features.vocab.normalize_name` (NFKC, case fold,
    whitespace and punctuation collapsed to `_`), so `John Grisham` and `JOHN GRISHAM` are one
    author; the name as first seen is kept in the `author` column. False keeps ids verbatim."""


class SourceConfig(FileSpec):
    """The interactions file, its column mapping, and optional item metadata files."""

    path: Path = EMBEDDED / "ratings.parquet"
    """The interactions file; left out, the embedded MovieLens data with its own column mapping
    and directors file (then `weight`, `timestamp` and `items` default to those too)."""
    user: str = "user_id"
    """Column holding the user id (kept verbatim as text)."""
    item: str = "movie_id"
    """Column holding the item id (kept verbatim as text)."""
    weight: str | None = None
    """Column holding a rating or play count; left out, the file has none and every
    interaction weighs 1."""
    timestamp: str | None = None
    """Column holding the time: Unix epoch numbers (see `timestamp_unit`) or ISO-8601 text;
    left out, the file has no time stamps."""
    timestamp_unit: Literal["s", "ms"] = "s"
    """Unit of numeric time stamps (a unit that is clearly wrong stops ingest with the fix)."""
    items: list[ItemsFile] = Field(default_factory=list)
    """Item metadata files, merged by item id: for each item the first file, then the first
    line, with a value wins; left out, no metadata (each item is its own author)."""
    duplicates: DuplicateRule = "last"
    """How repeated (user, item) pairs are combined: `last` keeps the latest weight (by time,
    then file order), `sum` adds them (play counts), `first`, `max` or `mean`."""
    max_rejected_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """Fail the run when more than this share of rows is rejected (a sign of a wrong mapping)."""
    future_tolerance_days: float = Field(1.0, ge=0.0)
    """Rows time-stamped more than this far after the ingest time are rejected."""

    @model_validator(mode="before")
    @classmethod
    def _embedded_defaults(cls, data: Any) -> Any:
        """Without a `path`, the embedded data's mapping fills the fields not given."""
        if isinstance(data, dict) and "path" not in data:
            return {**EMBEDDED_SOURCE, **data}
        return data

    @model_validator(mode="after")
    def _names_need_no_header(self) -> SourceConfig:
        if self.names is not None and self.header:
            raise ValueError("`names` is for files without a header: set header = false too")
        return self


PRESETS: dict[str, dict[str, object]] = {
    # Relative paths in presets are taken from the folder the user points at.
    "movielens-latest": dict(
        path="ratings.csv", format="csv", user="userId", item="movieId", weight="rating",
        timestamp="timestamp",
        items=[dict(path="movies.csv", item="movieId", title="title"),
               dict(path="movie_directors_hetrec.csv", item="movieId", author="directorId")],
    ),
    "movielens-1m": dict(
        path="ratings.dat", format="dat", header=False,
        names=["user", "item", "rating", "timestamp"], user="user", item="item", weight="rating",
        timestamp="timestamp",
        items=[dict(path="movies.dat", format="dat", header=False, encoding="latin-1",
                    names=["item", "title", "genres"], item="item", title="title")],
    ),
    "movielens-100k": dict(
        path="u.data", format="tsv", header=False, names=["user", "item", "rating", "timestamp"],
        user="user", item="item", weight="rating", timestamp="timestamp",
        items=[dict(path="u.item", format="csv", delimiter="|", header=False, encoding="latin-1",
                    names=["item", "title", "release", "video", "url"]
                    + [f"g{i}" for i in range(19)], item="item", title="title")],
    ),
    "lastfm": dict(
        path="user_artists.dat", format="tsv", user="userID", item="artistID", weight="weight",
        timestamp=None, duplicates="sum",
        # Last.fm artists are their own authors: the item is the artist.
        items=[dict(path="artists.dat", format="tsv", quote="", item="id", title="name")],
    ),
}


def preset_source(name: str, folder: Path, **overrides: object) -> SourceConfig:
    """A SourceConfig for a known public format; files are looked up in `folder`.

    `overrides` replace preset fields (e.g. `path` for a differently named ratings file,
    `items` to add a directors file).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    spec: dict[str, object] = {**PRESETS[name], **overrides}
    spec["path"] = folder / str(spec["path"])
    spec["items"] = [
        {**item, "path": folder / str(item["path"])} if isinstance(item, dict) else item
        for item in spec.get("items", [])  # type: ignore[union-attr]
    ]
    return SourceConfig.model_validate(spec)


@dataclass
class IngestResult:
    """The three tables ingest produces, the run report and the fingerprint of what was read."""

    interactions: pa.Table
    items: pa.Table
    rejected: pa.Table
    report: dict[str, Any] = field(default_factory=dict)
    """Counts for the manifest and summary (JSON-ready): rows read, rejected by reason,
    duplicates merged, items without author, author names merged, author conflicts, id
    conversions, time stamps present."""
    fingerprint: dict[str, str] = field(default_factory=dict)
    """sha256 of the bytes each input file held while it was read, by path (as given)."""


def check_file(path: Path, what: str) -> None:
    """Raise a DataError naming the path and the fix unless `path` is a readable, non-empty file."""
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist; check the path (or the preset folder)")
    if path.is_dir():
        raise DataError(f"{what} path {path} is a directory; point at the file inside it")
    if not os.access(path, os.R_OK):
        raise DataError(f"{what} file {path} is not readable; fix its permissions (chmod a+r)")
    if path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty; it needs a header and at least one row")


def file_sha256(path: Path) -> str:
    """sha256 (hex) of the file's bytes as stored (a .gz file: its compressed bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Run:
    """What one ingest collects on the way: fingerprints, id conversions."""

    fingerprint: dict[str, str] = field(default_factory=dict)
    id_conversions: dict[str, dict[str, int]] = field(default_factory=dict)


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load_raw(con: duckdb.DuckDBPyConnection, spec: FileSpec, table: str, what: str,
              run: _Run, id_cols: Sequence[str | None] = ()) -> list[str]:
    """Load `spec` into `table` with every column as text; return its column names.

    The file is hashed before and after it is read; a difference means it changed while being
    read (a writer still at work) and is a DataError. The hash goes into `run.fingerprint`.
    """
    check_file(spec.path, what)
    before = file_sha256(spec.path)
    cols = _read_table(con, spec, table, what, run, [c for c in id_cols if c])
    after = file_sha256(spec.path)
    if after != before:
        raise DataError(
            f"{what} file {spec.path} changed while it was being read (sha256 {before[:12]}... "
            f"before, {after[:12]}... after), so the rows read match neither version; rerun "
            "once whatever writes the file has finished, or point at a finished copy")
    run.fingerprint[str(spec.path)] = before
    return cols


def _read_table(con: duckdb.DuckDBPyConnection, spec: FileSpec, table: str, what: str,
                run: _Run, id_cols: list[str]) -> list[str]:
    fmt = spec.resolved_format()
    path = _sql_str(str(spec.path))
    if fmt == "parquet":
        try:
            con.execute(f"CREATE TEMP TABLE {table}_p AS SELECT * FROM read_parquet({path})")
        except duckdb.Error as exc:
            raise DataError(f"{what} file {spec.path} is not readable Parquet: {exc}") from exc
        described = con.execute(f"DESCRIBE {table}_p").fetchall()
        cols = [c[0] for c in described]
        casts = ", ".join(
            f"{_id_text(con, f'{table}_p', c, str(t), spec.path, what, run)} AS {_quote(c)}"
            if c in id_cols else f"CAST({_quote(c)} AS VARCHAR) AS {_quote(c)}"
            for c, t, *_ in described)
        con.execute(f"CREATE TEMP TABLE {table} AS SELECT {casts} FROM {table}_p")
        return cols
    delim = spec.delimiter or {"tsv": "\t", "dat": "::", "csv": ","}[fmt]
    opts = [
        f"delim={_sql_str(delim)}", f"header={str(spec.header).lower()}", "all_varchar=true",
        f"quote={_sql_str(spec.quote)}", f"escape={_sql_str(spec.quote)}",
        f"encoding={_sql_str(spec.encoding)}",
        "max_line_size=33554432", "null_padding=false", "strict_mode=true",
        "auto_detect=false" if spec.names else "auto_detect=true",
        # Malformed rows are collected instead of failing the sniffer (a ragged last row was
        # taken for the header), then reported below as a fatal error naming the line.
        "store_rejects=true", f"rejects_table='{table}_errors'", f"rejects_scan='{table}_scans'",
    ]
    if spec.names:
        opts.append("columns={" + ", ".join(f"{_sql_str(n)}: 'VARCHAR'" for n in spec.names) + "}")
    sql = f"CREATE TEMP TABLE {table} AS SELECT * FROM read_csv({path}, {', '.join(opts)})"
    try:
        con.execute(sql)
    except duckdb.Error as exc:
        full = str(exc)
        msg = full.splitlines()[0]
        hint = "check the delimiter, quoting and `header`/`names` settings"
        if "invalid unicode" in full.lower():
            hint = "the file is not valid UTF-8: set encoding = \"latin-1\" (or re-encode it)"
        raise DataError(f"{what} file {spec.path} could not be parsed ({msg}); {hint}") from exc
    bad = con.execute(f"SELECT line, error_type, error_message FROM {table}_errors "
                      "ORDER BY line LIMIT 1").fetchall()
    if bad:
        line, kind, detail = bad[0]
        hint = ("the file is not valid UTF-8: set encoding = \"latin-1\" (or re-encode it)"
                if kind == "INVALID ENCODING" else
                "fix or remove that row, or check the delimiter, quoting and `header`/`names`")
        raise DataError(f"{what} file {spec.path} could not be parsed: line {line} of the file "
                        f"is malformed ({kind.lower()}: {detail.splitlines()[0]}); {hint}")
    return [c[0] for c in con.execute(f"DESCRIBE {table}").fetchall()]


# Largest magnitude up to which every integer is exactly representable, by float type.
_EXACT_LIMIT = {"FLOAT": 2**24, "DOUBLE": 2**53}


def _id_text(con: duckdb.DuckDBPyConnection, table: str, col: str, dtype: str, path: Path,
             what: str, run: _Run) -> str:
    """SQL for a Parquet id column as text; float or decimal ids become integer text.

    `1.0` becomes `1` (so it matches the `1` of a CSV metadata file) with a DataWarning; NaN
    becomes null (a missing id). Fractional or infinite values, and float values at or beyond
    2^53 (2^24 for float32), where distinct integers share one float, are a DataError.
    """
    q = _quote(col)
    dtype = dtype.upper()
    is_float = dtype in _EXACT_LIMIT
    is_decimal = dtype.startswith("DECIMAL") and not dtype.endswith(",0)")
    if not (is_float or is_decimal):
        return f"CAST({q} AS VARCHAR)"
    finite = f"isfinite({q})" if is_float else "true"
    limit = _EXACT_LIMIT.get(dtype, 0)
    big = f"abs({q}) >= {float(limit)}" if limit else "false"
    n_bad, bad, n_big, big_eg, n_ok = con.execute(f"""
        SELECT count(*) FILTER (WHERE NOT {finite} OR {q} != trunc({q})),
               any_value({q}::VARCHAR) FILTER (WHERE NOT {finite} OR {q} != trunc({q})),
               count(*) FILTER (WHERE {finite} AND {big}),
               any_value({q}::VARCHAR) FILTER (WHERE {finite} AND {big}),
               count(*) FILTER (WHERE {finite})
        FROM {table} WHERE {q} IS NOT NULL AND NOT {f"isnan({q})" if is_float else "false"}
        """).fetchall()[0]
    fix = (f"write the column {col!r} as integers (int64) or strings when the file is made "
           "(e.g. pandas: df[col].astype('Int64') or .astype(str) before to_parquet)")
    if n_bad:
        raise DataError(f"{what} file {path}: id column {col!r} is stored as {dtype} and holds "
                        f"{n_bad} values that are not whole numbers (e.g. {bad}), which cannot be "
                        f"ids; {fix}")
    if n_big:
        raise DataError(
            f"{what} file {path}: id column {col!r} is stored as {dtype} and holds {n_big} "
            f"values of magnitude 2^{limit.bit_length() - 1} or more (e.g. {big_eg}): "
            f"such floats are not exact, so distinct ids may already have collapsed into one; "
            f"{fix}")
    if n_ok:
        run.id_conversions.setdefault(str(path), {})[col] = int(n_ok)
        warnings.warn(
            f"{what} file {path}: id column {col!r} is stored as {dtype}; its {n_ok} values were "
            f"converted to integer text ('1.0' -> '1') so they match ids written as integers "
            f"elsewhere; to avoid this, {fix}", DataWarning, stacklevel=2)
    null_nan = f"WHEN isnan({q}) THEN NULL " if is_float else ""
    return f"CASE {null_nan}WHEN {q} IS NULL THEN NULL ELSE CAST({q}::HUGEINT AS VARCHAR) END"


def _require(cols: list[str], wanted: dict[str, str | None], path: Path, what: str) -> None:
    clean = [c.lstrip("\ufeff") for c in cols]
    for role, col in wanted.items():
        if col is not None and col not in cols and col not in clean:
            raise DataError(
                f"{what} file {path}: column {col!r} (the {role} column) is missing; the file has "
                f"columns {cols}. Set `{role} = \"<column>\"` in the source config (or pick the "
                "right preset / delimiter)"
            )


def _col(cols: list[str], name: str) -> str:
    """Quoted column reference, tolerating a UTF-8 byte-order mark glued to the first header."""
    actual = name if name in cols else "\ufeff" + name
    return _quote(actual)


def ingest(source: SourceConfig, db_path: Path | None = None, *, now: float | None = None
           ) -> IngestResult:
    """Read, validate and normalise the source into `interactions`, `items` and `rejected`.

    Fatal problems (missing file or column, empty input, too many bad rows, a time stamp unit
    that is clearly wrong, a file changed while read) raise DataError. Skippable bad rows (null
    ids, bad weights or times, repeated pairs whose summed weight overflows) go to `rejected`
    with a reason. When `db_path` is given the three tables are also stored in that DuckDB file.
    """
    con = duckdb.connect(str(db_path) if db_path else ":memory:")
    try:
        return _ingest(con, source, time.time() if now is None else now)
    finally:
        con.close()


_NUMERIC_TS = "-?[0-9]+(\\.[0-9]+)?"
_SCALE = {"s": 1_000_000, "ms": 1_000}  # numeric time stamp unit -> microseconds
_UNIT_WORD = {"s": "seconds", "ms": "milliseconds"}
_US_PER_YEAR = 365.2425 * 86400e6


def _check_timestamp_unit(con: duckdb.DuckDBPyConnection, src: SourceConfig, now: float) -> None:
    """DataError when numeric time stamps are implausible in `timestamp_unit` but fit the other.

    Plausible: from 1971-01-01 up to now + `future_tolerance_days`. Milliseconds read as
    seconds land far in the future, seconds read as milliseconds in January 1970; when under
    half the numeric stamps are plausible as configured and at least 90% are in the other
    unit, the unit is wrong.
    """
    cur = src.timestamp_unit
    alt = "ms" if cur == "s" else "s"
    lo, hi = 365 * 86400e6, (now + src.future_tolerance_days * 86400) * 1e6
    n, ok_cur, ok_alt, n_future, x_min, x_max = con.execute(f"""
        WITH t AS (SELECT TRY_CAST(t_raw AS DOUBLE) AS x FROM typed
                   WHERE regexp_full_match(t_raw, '{_NUMERIC_TS}'))
        SELECT count(x),
               count(*) FILTER (WHERE x * {_SCALE[cur]} BETWEEN {lo} AND {hi}),
               count(*) FILTER (WHERE x * {_SCALE[alt]} BETWEEN {lo} AND {hi}),
               count(*) FILTER (WHERE x * {_SCALE[cur]} > {hi}),
               min(x), max(x)
        FROM t""").fetchall()[0]
    if not n or ok_cur >= 0.5 * n or ok_alt < 0.9 * n:
        return

    def years(unit: str) -> str:
        a, b = (1970 + x * _SCALE[unit] / _US_PER_YEAR for x in (x_min, x_max))
        return f"{int(a)}" if int(a) == int(b) else f"{int(a)} to {int(b)}"

    where = "lie in the future" if n_future > n - ok_cur - n_future else "fall before 1971"
    raise DataError(
        f"interactions file {src.path}: the time stamps in column {src.timestamp!r} look like "
        f"{_UNIT_WORD[alt]}, not {_UNIT_WORD[cur]}: read as {_UNIT_WORD[cur]} "
        f"{n - ok_cur} of {n} {where} (years {years(cur)}), read as {_UNIT_WORD[alt]} they fall "
        f"in {years(alt)}. Set timestamp_unit = \"{alt}\" in [source]")


OVERFLOW_REASON = "summed weight of a repeated pair is infinite"
"""The `rejected` reason of every row of a (user, item) pair whose `duplicates = "sum"` total
overflows float64: the pair is quarantined rather than kept with an infinite weight."""


def _ingest(con: duckdb.DuckDBPyConnection, src: SourceConfig, now: float) -> IngestResult:
    con.execute("SET threads = 1")
    con.execute("SET TimeZone = 'UTC'")  # naive times and now() are UTC, like Unix seconds
    run = _Run()
    cols = _load_raw(con, src, "raw", "interactions", run, id_cols=[src.user, src.item])
    _require(cols, {"user": src.user, "item": src.item, "weight": src.weight,
                    "timestamp": src.timestamp}, src.path, "interactions")
    n_raw = con.execute("SELECT count(*) FROM raw").fetchall()[0][0]
    if n_raw == 0:
        raise DataError(f"interactions file {src.path} has no data rows (header only?); "
                        "it needs at least one interaction")
    u, i = _col(cols, src.user), _col(cols, src.item)
    w_raw = _col(cols, src.weight) if src.weight else "NULL"
    t_raw = _col(cols, src.timestamp) if src.timestamp else "NULL"
    scale = _SCALE[src.timestamp_unit]
    now_sql = f"to_timestamp({now})"
    con.execute(f"""
        CREATE TEMP TABLE typed AS
        SELECT row_number() OVER () AS line,
               nullif(trim({u}), '') AS user_id,
               nullif(trim({i}), '') AS item_id,
               nullif(trim({w_raw}), '') AS w_raw,
               nullif(trim({t_raw}), '') AS t_raw,
               left(concat_ws({_sql_str(', ')}, {u}, {i}, {w_raw}, {t_raw}), 1000) AS raw
        FROM raw""")
    if src.timestamp:
        _check_timestamp_unit(con, src, now)
    con.execute(f"""
        CREATE TEMP TABLE parsed AS
        SELECT *,
          {'TRY_CAST(w_raw AS DOUBLE)' if src.weight else '1.0::DOUBLE'} AS weight,
          CASE WHEN t_raw IS NULL THEN NULL
               WHEN regexp_full_match(t_raw, '{_NUMERIC_TS}')
                 THEN TRY(make_timestamp(CAST(TRY_CAST(t_raw AS DOUBLE) * {scale} AS BIGINT))
                          ::TIMESTAMPTZ)
               -- TIMESTAMPTZ honours a "+02:00" offset; naive text is UTC (the session zone)
               ELSE TRY_CAST(t_raw AS TIMESTAMPTZ) END AS ts
        FROM typed""")
    weight_checks = "" if not src.weight else """
          WHEN w_raw IS NULL THEN 'missing weight'
          WHEN weight IS NULL THEN 'weight is not a number'
          WHEN isnan(weight) OR isinf(weight) THEN 'weight is NaN or infinite'
          WHEN weight < 0 THEN 'negative weight'"""
    time_checks = "" if not src.timestamp else f"""
          WHEN t_raw IS NOT NULL AND ts IS NULL THEN 'unparseable timestamp'
          WHEN ts > {now_sql} + to_seconds({src.future_tolerance_days * 86400})
            THEN 'timestamp in the future'"""
    con.execute(f"""
        CREATE TEMP TABLE checked AS
        SELECT *, CASE
          WHEN user_id IS NULL THEN 'missing user id'
          WHEN item_id IS NULL THEN 'missing item id'{weight_checks}{time_checks}
          ELSE NULL END AS reason
        FROM parsed""")
    if src.duplicates == "sum":
        # Weights are finite and >= 0, so a pair's sum only overflows; quarantine its rows.
        con.execute(f"""
            UPDATE checked SET reason = {_sql_str(OVERFLOW_REASON)}
            FROM (SELECT user_id, item_id FROM checked WHERE reason IS NULL
                  GROUP BY ALL HAVING isinf(sum(weight))) o
            WHERE checked.reason IS NULL AND checked.user_id = o.user_id
              AND checked.item_id = o.item_id""")
    rejected = con.sql(f"""
        SELECT {_sql_str(str(src.path))} AS file, line, reason, raw FROM checked
        WHERE reason IS NOT NULL ORDER BY line""").to_arrow_table()
    n_bad = rejected.num_rows
    if n_bad == n_raw:
        reasons = con.execute("SELECT reason, count(*) FROM checked GROUP BY 1 ORDER BY 2 DESC"
                              ).fetchall()
        raise DataError(f"interactions file {src.path}: all {n_raw} rows were rejected "
                        f"({reasons}); check the column mapping and the file's format")
    if n_bad / n_raw > src.max_rejected_fraction:
        raise DataError(
            f"interactions file {src.path}: {n_bad} of {n_raw} rows rejected, more than "
            f"max_rejected_fraction={src.max_rejected_fraction}; the mapping is probably wrong "
            "(see the reasons in the error rows) or raise the limit")
    epoch = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
    agg = {
        "last": f"arg_max(weight, (coalesce(ts, {epoch}), line))",
        "first": f"arg_min(weight, (coalesce(ts, {epoch}), line))",
        "sum": "sum(weight)", "max": "max(weight)",
        # avg overflows for two weights near 1e308 although their mean is finite
        "mean": "CASE WHEN isfinite(avg(weight)) THEN avg(weight) "
                "ELSE sum(weight / n_dup) END",
    }[src.duplicates]
    con.execute(f"""
        CREATE OR REPLACE TABLE interactions AS
        SELECT user_id, item_id, {agg} AS weight, max(ts) AS ts
        FROM (SELECT *, count(*) OVER (PARTITION BY user_id, item_id) AS n_dup
              FROM checked WHERE reason IS NULL)
        GROUP BY user_id, item_id ORDER BY user_id, item_id""")
    n_good = con.execute("SELECT count(*) FROM checked WHERE reason IS NULL").fetchall()[0][0]
    n_pairs = con.execute("SELECT count(*) FROM interactions").fetchall()[0][0]
    items_report = _ingest_items(con, src.items, run)
    con.register("rejected_view", rejected)
    con.execute("CREATE OR REPLACE TABLE rejected AS SELECT * FROM rejected_view")
    interactions = con.sql("SELECT * FROM interactions").to_arrow_table().cast(
        INTERACTIONS_SCHEMA)
    items = con.sql(f"SELECT {ITEM_ID}, {TITLE}, {AUTHOR_ID}, {AUTHOR} FROM items "
                    "ORDER BY item_id").to_arrow_table().cast(ITEMS_SCHEMA)
    reasons = dict(con.execute("SELECT reason, count(*) FROM rejected GROUP BY 1 ORDER BY 1"
                               ).fetchall())
    report: dict[str, Any] = {
        "rows_read": n_raw, "rows_rejected": n_bad, "rejected_by_reason": reasons,
        "duplicate_rows_merged": n_good - n_pairs, "duplicate_rule": src.duplicates,
        "interactions": n_pairs, "users": len(set(interactions.column(USER_ID).to_pylist())),
        "items": items.num_rows, **items_report,
        "id_conversions": run.id_conversions,
        "has_timestamps": interactions.column(TS).null_count < interactions.num_rows,
    }
    if n_bad:
        log.warning("ingest: rejected %d of %d rows: %s", n_bad, n_raw, reasons)
    return IngestResult(interactions, items, rejected.cast(REJECTED_SCHEMA), report,
                        run.fingerprint)


def _ingest_items(con: duckdb.DuckDBPyConnection, files: list[ItemsFile], run: _Run
                  ) -> dict[str, int]:
    """Build `items(item_id, title, author_id, author)` for every interacted item.

    Metadata rows are ranked by (file, line): per item the first ranked row with a title gives
    the title and the first with an author gives the author, whatever the row order within a
    file. `author_id` is the normalised name (`ItemsFile.normalize_authors`) and `author` the
    name as first seen for that id; an item with no author is its own author (`item:<id>`,
    `author` null), so the diversity cap treats it as unique. Returns the items' report counts.
    """
    parts = []
    for n, spec in enumerate(files):
        table = f"meta{n}"
        cols = _load_raw(con, spec, table, "items", run, id_cols=[spec.item, spec.author])
        _require(cols, {"item": spec.item, "title": spec.title, "author": spec.author},
                 spec.path, "items")
        title = _col(cols, spec.title) if spec.title else "NULL"
        author = _col(cols, spec.author) if spec.author else "NULL"
        parts.append(f"""
            SELECT {n} AS prio, row_number() OVER () AS line, {str(spec.normalize_authors)} AS norm,
                   nullif(trim({_col(cols, spec.item)}), '') AS item_id,
                   nullif(trim({title}), '') AS title, nullif(trim({author}), '') AS author
            FROM {table}""")
    meta = " UNION ALL ".join(parts) if parts else (
        "SELECT 0 AS prio, 0::BIGINT AS line, true AS norm, NULL::VARCHAR AS item_id, "
        "NULL::VARCHAR AS title, NULL::VARCHAR AS author WHERE false")
    con.execute(f"CREATE TEMP TABLE meta AS {meta}")
    names = [r[0] for r in con.execute(
        "SELECT DISTINCT author FROM meta WHERE norm AND author IS NOT NULL").fetchall()]
    keys = pa.table({"raw": pa.array(names, pa.string()),
                     "key": pa.array([normalize_name(a) or None for a in names], pa.string())})
    con.register("author_keys", keys)
    con.execute("""
        CREATE TEMP TABLE meta_keyed AS
        SELECT m.*, CASE WHEN m.norm THEN k.key ELSE m.author END AS author_key
        FROM meta m LEFT JOIN author_keys k ON m.norm AND m.author = k.raw""")
    con.execute("""
        CREATE OR REPLACE TABLE items AS
        WITH merged AS (
          SELECT item_id,
                 arg_min(title, (prio, line)) FILTER (WHERE title IS NOT NULL) AS title,
                 arg_min(author_key, (prio, line)) FILTER (WHERE author_key IS NOT NULL)
                   AS author_key
          FROM meta_keyed WHERE item_id IS NOT NULL GROUP BY item_id),
        display AS (
          SELECT author_key, arg_min(author, (prio, line)) AS author
          FROM meta_keyed WHERE author_key IS NOT NULL GROUP BY author_key)
        SELECT i.item_id, m.title, coalesce(m.author_key, 'item:' || i.item_id) AS author_id,
               d.author
        FROM (SELECT DISTINCT item_id FROM interactions) i
        LEFT JOIN merged m USING (item_id)
        LEFT JOIN display d USING (author_key)""")
    n_merged, eg = con.execute("""
        SELECT coalesce(sum(n - 1), 0), list(names ORDER BY names[1]) FILTER (WHERE n > 1)[1]
        FROM (SELECT author_key, count(DISTINCT author) AS n,
                     list(DISTINCT author ORDER BY author) AS names
              FROM meta_keyed WHERE norm AND author_key IS NOT NULL GROUP BY author_key)
        """).fetchall()[0]
    if n_merged:
        log.info("ingest: %d author names merged by normalisation (e.g. %s)", n_merged, eg)
    conflicts = con.execute("""
        SELECT item_id, list(author_key ORDER BY prio, line) AS keys
        FROM (SELECT item_id, author_key, min(prio) AS prio, min(line) AS line FROM meta_keyed
              WHERE item_id IS NOT NULL AND author_key IS NOT NULL GROUP BY item_id, author_key)
        GROUP BY item_id HAVING count(*) > 1 ORDER BY item_id""").fetchall()
    if conflicts:
        item_id, keys = conflicts[0]
        warnings.warn(
            f"items files {[str(f.path) for f in files]}: {len(conflicts)} item ids are listed "
            f"under more than one author (e.g. item {item_id!r}: {keys}); the first file, then "
            "the first line, wins. Fix the metadata if another author is right", DataWarning,
            stacklevel=3)
    n_no_author = con.execute("SELECT count(*) FROM items WHERE author IS NULL").fetchall()[0][0]
    return {"items_without_author": n_no_author, "author_names_merged": int(n_merged),
            "author_conflicts": len(conflicts)}
