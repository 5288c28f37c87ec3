"""Ingest: raw interaction and item files into a DuckDB database, validated at the edge."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.columns import AUTHOR_ID, ITEM_ID, TITLE, TS, USER_ID, WEIGHT
from features.errors import ConfigError, DataError
from features.resources import data_path

log = logging.getLogger(__name__)

EMBEDDED = data_path("movielens-small")

FileFormat = Literal["auto", "csv", "tsv", "dat", "parquet"]
DuplicateRule = Literal["last", "first", "sum", "max", "mean"]

INTERACTIONS_SCHEMA = pa.schema([
    pa.field(USER_ID, pa.string(), nullable=False),
    pa.field(ITEM_ID, pa.string(), nullable=False),
    pa.field(WEIGHT, pa.float64(), nullable=False),
    pa.field(TS, pa.timestamp("us"), nullable=True),
])
ITEMS_SCHEMA = pa.schema([
    pa.field(ITEM_ID, pa.string(), nullable=False),
    pa.field(TITLE, pa.string(), nullable=True),
    pa.field(AUTHOR_ID, pa.string(), nullable=False),
])
REJECTED_SCHEMA = pa.schema([
    pa.field("file", pa.string(), nullable=False),
    pa.field("line", pa.int64(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("raw", pa.string(), nullable=True),
])


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
    """Column holding the author (director, artist, writer) id, if this file has one."""


class SourceConfig(FileSpec):
    """The interactions file, its column mapping, and optional item metadata files."""

    path: Path = EMBEDDED / "ratings.parquet"
    user: str = "user_id"
    """Column holding the user id (kept verbatim as text)."""
    item: str = "movie_id"
    """Column holding the item id (kept verbatim as text)."""
    weight: str | None = "rating"
    """Column holding a rating or play count; none means every interaction weighs 1."""
    timestamp: str | None = "timestamp"
    """Column holding the time: Unix epoch numbers (see `timestamp_unit`) or ISO-8601 text."""
    timestamp_unit: Literal["s", "ms"] = "s"
    """Unit of numeric time stamps."""
    items: list[ItemsFile] = Field(
        default_factory=lambda: [
            ItemsFile(path=EMBEDDED / "movies.parquet", item="movie_id", title="title",
                      author="director_id")
        ]
    )
    """Item metadata files, merged by item id (the first file that has a value wins)."""
    duplicates: DuplicateRule = "last"
    """How repeated (user, item) pairs are combined: `last` keeps the latest weight (by time,
    then file order), `sum` adds them (play counts), `first`, `max` or `mean`."""
    max_rejected_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """Fail the run when more than this share of rows is rejected (a sign of a wrong mapping)."""
    future_tolerance_days: float = Field(1.0, ge=0.0)
    """Rows time-stamped more than this far after the ingest time are rejected."""

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
    """The three tables ingest produces, plus counts for the run report."""

    interactions: pa.Table
    items: pa.Table
    rejected: pa.Table
    report: dict[str, object] = field(default_factory=dict)


def check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist; check the path (or the preset folder)")
    if path.is_dir():
        raise DataError(f"{what} path {path} is a directory; point at the file inside it")
    if not os.access(path, os.R_OK):
        raise DataError(f"{what} file {path} is not readable; fix its permissions (chmod a+r)")
    if path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty; it needs a header and at least one row")


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _load_raw(con: duckdb.DuckDBPyConnection, spec: FileSpec, table: str, what: str) -> list[str]:
    """Load `spec` into `table` with every column as text; return its column names."""
    check_file(spec.path, what)
    fmt = spec.resolved_format()
    path = _sql_str(str(spec.path))
    if fmt == "parquet":
        try:
            con.execute(f"CREATE TEMP TABLE {table}_p AS SELECT * FROM read_parquet({path})")
        except duckdb.Error as exc:
            raise DataError(f"{what} file {spec.path} is not readable Parquet: {exc}") from exc
        cols = [c[0] for c in con.execute(f"DESCRIBE {table}_p").fetchall()]
        casts = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in cols)
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
    return '"' + actual.replace('"', '""') + '"'


def ingest(source: SourceConfig, db_path: Path | None = None, *, now: float | None = None
           ) -> IngestResult:
    """Read, validate and normalise the source into `interactions`, `items` and `rejected`.

    Fatal problems (missing file or column, empty input, too many bad rows) raise DataError.
    Skippable bad rows (null ids, bad weights or times) go to `rejected` with a reason.
    When `db_path` is given the three tables are also stored in that DuckDB database file.
    """
    con = duckdb.connect(str(db_path) if db_path else ":memory:")
    try:
        return _ingest(con, source, now)
    finally:
        con.close()


def _ingest(con: duckdb.DuckDBPyConnection, src: SourceConfig, now: float | None) -> IngestResult:
    con.execute("SET threads = 1")
    con.execute("SET TimeZone = 'UTC'")  # naive times and now() are UTC, like Unix seconds
    cols = _load_raw(con, src, "raw", "interactions")
    _require(cols, {"user": src.user, "item": src.item, "weight": src.weight,
                    "timestamp": src.timestamp}, src.path, "interactions")
    n_raw = con.execute("SELECT count(*) FROM raw").fetchall()[0][0]
    if n_raw == 0:
        raise DataError(f"interactions file {src.path} has no data rows (header only?); "
                        "it needs at least one interaction")
    u, i = _col(cols, src.user), _col(cols, src.item)
    w_raw = _col(cols, src.weight) if src.weight else "NULL"
    t_raw = _col(cols, src.timestamp) if src.timestamp else "NULL"
    scale = 1_000_000 if src.timestamp_unit == "s" else 1_000
    now_sql = f"to_timestamp({now})::TIMESTAMP" if now is not None else "now()::TIMESTAMP"
    con.execute(f"""
        CREATE TEMP TABLE typed AS
        SELECT row_number() OVER () AS line,
               nullif(trim({u}), '') AS user_id,
               nullif(trim({i}), '') AS item_id,
               nullif(trim({w_raw}), '') AS w_raw,
               nullif(trim({t_raw}), '') AS t_raw,
               left(concat_ws({_sql_str(', ')}, {u}, {i}, {w_raw}, {t_raw}), 1000) AS raw
        FROM raw""")
    con.execute(f"""
        CREATE TEMP TABLE parsed AS
        SELECT *,
          {'TRY_CAST(w_raw AS DOUBLE)' if src.weight else '1.0::DOUBLE'} AS weight,
          CASE WHEN t_raw IS NULL THEN NULL
               WHEN regexp_full_match(t_raw, '-?[0-9]+(\\.[0-9]+)?')
                 THEN TRY(make_timestamp(CAST(TRY_CAST(t_raw AS DOUBLE) * {scale} AS BIGINT)))
               -- via TIMESTAMPTZ: a plain TIMESTAMP cast drops a "+02:00" offset
               ELSE TRY_CAST(t_raw AS TIMESTAMPTZ) AT TIME ZONE 'UTC' END AS ts
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
    agg = {
        "last": "arg_max(weight, (coalesce(ts, TIMESTAMP '1970-01-01'), line))",
        "first": "arg_min(weight, (coalesce(ts, TIMESTAMP '1970-01-01'), line))",
        "sum": "sum(weight)", "max": "max(weight)", "mean": "avg(weight)",
    }[src.duplicates]
    con.execute(f"""
        CREATE OR REPLACE TABLE interactions AS
        SELECT user_id, item_id, {agg} AS weight, max(ts) AS ts
        FROM checked WHERE reason IS NULL
        GROUP BY user_id, item_id ORDER BY user_id, item_id""")
    n_good = con.execute("SELECT count(*) FROM checked WHERE reason IS NULL").fetchall()[0][0]
    n_pairs = con.execute("SELECT count(*) FROM interactions").fetchall()[0][0]
    _ingest_items(con, src.items)
    con.register("rejected_view", rejected)
    con.execute("CREATE OR REPLACE TABLE rejected AS SELECT * FROM rejected_view")
    interactions = con.sql("SELECT * FROM interactions").to_arrow_table().cast(
        INTERACTIONS_SCHEMA)
    items = con.sql("SELECT * FROM items ORDER BY item_id").to_arrow_table().cast(ITEMS_SCHEMA)
    n_no_meta = con.execute("SELECT count(*) FROM items WHERE author_id LIKE 'item:%'"
                            ).fetchall()[0][0]
    reasons = dict(con.execute("SELECT reason, count(*) FROM rejected GROUP BY 1").fetchall())
    report = {
        "rows_read": n_raw, "rows_rejected": n_bad, "rejected_by_reason": reasons,
        "duplicate_rows_merged": n_good - n_pairs, "duplicate_rule": src.duplicates,
        "interactions": n_pairs, "users": len(set(interactions.column(USER_ID).to_pylist())),
        "items": items.num_rows, "items_without_author": n_no_meta,
        "has_timestamps": interactions.column(TS).null_count < interactions.num_rows,
    }
    if n_bad:
        log.warning("ingest: rejected %d of %d rows: %s", n_bad, n_raw, reasons)
    return IngestResult(interactions, items, rejected.cast(REJECTED_SCHEMA), report)


def _ingest_items(con: duckdb.DuckDBPyConnection, files: list[ItemsFile]) -> None:
    """Build `items(item_id, title, author_id)` for every interacted item.

    Metadata files are merged by item id, the first file with a value winning; an item with no
    author is its own author (`item:<id>`), so the diversity cap treats it as unique.
    """
    parts = []
    for n, spec in enumerate(files):
        table = f"meta{n}"
        cols = _load_raw(con, spec, table, "items")
        _require(cols, {"item": spec.item, "title": spec.title, "author": spec.author},
                 spec.path, "items")
        title = _col(cols, spec.title) if spec.title else "NULL"
        author = _col(cols, spec.author) if spec.author else "NULL"
        parts.append(f"""SELECT {n} AS prio, nullif(trim({_col(cols, spec.item)}), '') AS item_id,
                         nullif(trim({title}), '') AS title, nullif(trim({author}), '') AS author
                         FROM {table}""")
    meta = " UNION ALL ".join(parts) if parts else (
        "SELECT 0 AS prio, NULL::VARCHAR AS item_id, NULL::VARCHAR AS title, "
        "NULL::VARCHAR AS author WHERE false")
    con.execute(f"""
        CREATE OR REPLACE TABLE items AS
        WITH meta AS ({meta}),
        merged AS (
          SELECT item_id,
                 arg_min(title, prio) FILTER (WHERE title IS NOT NULL) AS title,
                 arg_min(author, prio) FILTER (WHERE author IS NOT NULL) AS author
          FROM meta WHERE item_id IS NOT NULL GROUP BY item_id)
        SELECT i.item_id, m.title, coalesce(m.author, 'item:' || i.item_id) AS author_id
        FROM (SELECT DISTINCT item_id FROM interactions) i
        LEFT JOIN merged m USING (item_id)""")
