"""Hostile and broken input through `recsys run`: each case's exact outcome, table-driven.

Every case starts from the valid tiny data set, breaks it in one way, and runs the CLI
in-process. A fatal case must exit 2 with a message naming the cause and publish nothing; a
skippable case must publish, with exactly the expected rows quarantined in `rejected.parquet`
(reasons and data-row numbers) and counted in the manifest.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import tiny_config_dict, to_toml

HEADER = "user,item,rating,ts\n"
TS = 1_600_000_000  # a valid Unix time inside the tiny data's range
N_ROWS = 30 * 12  # data rows of the tiny ratings file
TEN_MB = 10 << 20


@dataclass
class Data:
    """One case's folder: the tiny files, the config mapping (editable), extra state."""

    folder: Path
    ratings: Path
    items: Path
    raw: dict[str, Any]
    toml_text: str | None = None  # when set, written verbatim instead of `raw`

    @property
    def source(self) -> dict[str, Any]:
        return self.raw["source"]

    def append(self, rows: str | bytes) -> None:
        with open(self.ratings, "ab") as handle:
            handle.write(rows.encode() if isinstance(rows, str) else rows)

    def lines(self) -> list[str]:
        return self.ratings.read_text().splitlines()

    def rewrite(self, fn: Callable[[str], str]) -> None:
        """Apply `fn` to every line of the ratings file (header included)."""
        self.ratings.write_text("".join(fn(line) + "\n" for line in self.lines()))


@dataclass(frozen=True)
class Case:
    """One hostile input and the exact behaviour expected from it."""

    id: str
    build: Callable[[Data], None]
    error: str | None = None
    """Fatal: a regex the CLI's message must match (exit 2, nothing published)."""
    names: Callable[[Data], str] | None = None
    """Fatal: the file or key the message must name (default: the ratings file)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Skippable: reason -> number of rows in rejected.parquet."""
    lines: list[int] | None = None
    """Skippable: the data-row numbers of the rejected rows, in order."""
    check: Callable[[Data, Path], None] | None = None
    """Skippable: further assertions on the published run folder."""
    skip_if: Callable[[], str | None] = lambda: None


def read(run: Path, name: str) -> list[dict[str, Any]]:
    return pq.read_table(run / f"{name}.parquet").to_pylist()


def recs_by_user(run: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in read(run, "recommendations"):
        out.setdefault(row["user_id"], []).append(row)
    return out


def ids(run: Path, table: str, column: str) -> set[str]:
    return {r[column] for r in read(run, table)}


# ---------------------------------------------------------------- fatal input builders ----


def empty_file(d: Data) -> None:
    d.ratings.write_bytes(b"")


def header_only(d: Data) -> None:
    d.ratings.write_text(HEADER)


def missing_column(d: Data) -> None:
    d.rewrite(lambda line: ",".join(line.split(",")[:2] + line.split(",")[3:]))


def misnamed_column(d: Data) -> None:
    d.source["weight"] = "score"


def wrong_delimiter(d: Data) -> None:
    d.rewrite(lambda line: line.replace(",", ";"))


def non_utf8_bytes(d: Data) -> None:
    d.append(f"caf\xe9,0001,4,{TS}\n".encode("latin-1"))


def ragged_extra_field(d: Data) -> None:
    d.append(f"u001,0002,4,{TS},oops\n")  # the last line: once mistaken for the header


def ragged_missing_field(d: Data) -> None:
    lines = d.lines()
    lines.insert(99, "u001,0002")  # physical line 100 of the file
    d.ratings.write_text("\n".join(lines) + "\n")


def unterminated_quote(d: Data) -> None:
    d.append(f'u001,"0002,4,{TS}\nu002,0003,4,{TS}\n')


def path_missing(d: Data) -> None:
    d.source["path"] = str(d.folder / "nope.csv")


def path_is_directory(d: Data) -> None:
    (d.folder / "ratings_dir").mkdir()
    d.source["path"] = str(d.folder / "ratings_dir")


def unreadable(d: Data) -> None:
    d.ratings.chmod(0)


def not_root() -> str | None:
    if os.geteuid() == 0:
        return "running as root: file permissions do not block reads, so chmod 000 is readable"
    return None


def items_missing(d: Data) -> None:
    d.source["items"][0]["path"] = str(d.folder / "no_items.csv")


def items_missing_column(d: Data) -> None:
    d.source["items"][0]["author"] = "director"


def items_empty(d: Data) -> None:
    d.items.write_bytes(b"")


def config_typo_key(d: Data) -> None:
    d.raw["diversify"]["max_per_autor"] = 3


def config_typo_source_key(d: Data) -> None:
    d.source["wieght"] = "rating"


def config_out_of_range(d: Data) -> None:
    d.raw["diversify"]["max_per_author"] = 0


def config_fraction_out_of_range(d: Data) -> None:
    d.source["max_rejected_fraction"] = 1.5


def config_unknown_choice(d: Data) -> None:
    d.source["duplicates"] = "newest"


def config_names_with_header(d: Data) -> None:
    d.source["names"] = ["user", "item", "rating", "ts"]


def config_not_toml(d: Data) -> None:
    d.toml_text = "[source\npath = 'ratings.csv'\n"


def too_many_bad_rows(d: Data) -> None:
    d.source["max_rejected_fraction"] = 0.01
    d.append("".join(f"u{u:03d},0001,lots,{TS}\n" for u in range(10)))


def every_row_bad(d: Data) -> None:
    d.rewrite(lambda line: line if line.startswith("user") else re.sub(
        r",(\d+),(\d+)$", r",five,\2", line))


def float_ids_parquet(d: Data, extra_user: float | None = None) -> None:
    """The ratings as Parquet with float64 user and item ids (a pandas NaN-upcast habit)."""
    import pyarrow as pa

    rows = [line.split(",") for line in d.lines()[1:]]
    users = [float(u[1:]) for u, *_ in rows]
    items = [float(i) for _, i, *_ in rows]
    if extra_user is not None:
        users, items, rows = users + [extra_user], items + [1.0], rows + [["", "", "4", str(TS)]]
    target = d.folder / "ratings.parquet"
    pq.write_table(pa.table({"user": users, "item": items,
                             "rating": [float(r[2]) for r in rows],
                             "ts": [int(r[3]) for r in rows]}), target)
    d.source["path"] = str(target)
    d.items.write_text("item,title,author\n" + "".join(
        f"{i},Item {i},author{i % 5}\n" for i in range(40)))


def huge_float_ids(d: Data) -> None:
    float_ids_parquet(d, extra_user=2.0**53 + 2)


def parquet_named(d: Data) -> str:
    return str(d.folder / "ratings.parquet")


def ms_read_as_seconds(d: Data) -> None:
    d.rewrite(lambda line: line if line.startswith("user") else line + "000")


def seconds_read_as_ms(d: Data) -> None:
    d.source["timestamp_unit"] = "ms"


def named_timestamp_missing(d: Data) -> None:
    d.source["timestamp"] = "event_time"


def case_folder_named(name: str) -> Callable[[Data], str]:
    return lambda d: str(d.folder / name)


# ------------------------------------------------------------ skippable input builders ----


def extra_columns(d: Data) -> None:
    d.rewrite(lambda line: line + (",device,note" if line.startswith("user") else ",web,x y"))


def quoted_delimiters_and_newlines(d: Data) -> None:
    text = d.items.read_text().replace(
        "0001,Item 1,author1", '0001,"Item 1, the ""first""\nsecond line",author1')
    d.items.write_text(text)
    d.append("".join(f'"u,{n}",0{i:03d},5,{TS}\n' for n in (1, 2)
                     for i in (1, 3, 5, 7, 9)))


def check_quoted(d: Data, run: Path) -> None:
    titles = {r["item_id"]: r["title"] for r in read(run, "items")}
    assert titles["0001"] == 'Item 1, the "first"\nsecond line'
    assert {"u,1", "u,2"} <= ids(run, "interactions", "user_id")
    assert {"u,1", "u,2"} <= set(recs_by_user(run))


def bom(d: Data) -> None:
    d.ratings.write_bytes(b"\xef\xbb\xbf" + d.ratings.read_bytes())
    d.items.write_bytes(b"\xef\xbb\xbf" + d.items.read_bytes())


def check_bom(d: Data, run: Path) -> None:
    users = ids(run, "interactions", "user_id")
    assert len(users) == 30 and all(u.startswith("u") for u in users)
    assert all(r["author_id"].startswith("author") for r in read(run, "items"))


def null_ids(d: Data) -> None:
    d.append(f",0001,4,{TS}\nu001,,4,{TS}\n  ,0002,3,{TS}\n\"\",0003,3,{TS}\n")


def verbatim_ids(d: Data) -> None:
    # "7", "07" and "007" are three different users; "ISBN-0X" is an item.
    d.append("".join(f"{u},{i},5,{TS}\n" for u in ("7", "07", "007")
                     for i in ("0001", "0003", "0005", "ISBN-0X")))
    d.append(f"u000,ISBN-0X,5,{TS}\nu002,ISBN-0X,4,{TS}\n")


def check_verbatim(d: Data, run: Path) -> None:
    by_user = recs_by_user(run)
    for user in ("7", "07", "007"):
        assert len(by_user[user]) == 5, user
    assert "ISBN-0X" in ids(run, "items", "item_id")
    catalogue = {f"0{i:03d}" for i in range(40)} | {"ISBN-0X"}
    assert ids(run, "recommendations", "item_id") <= catalogue


HUGE_USER = str(2**64 + 1)
HUGE_ITEM = "99999999999999999999999"


def huge_ids(d: Data) -> None:
    d.append("".join(f"{HUGE_USER},0{i:03d},5,{TS}\n" for i in (0, 2, 4, 6)))
    d.append("".join(f"u{u:03d},{HUGE_ITEM},5,{TS}\n" for u in (0, 2, 4)))


def check_huge(d: Data, run: Path) -> None:
    assert HUGE_USER in ids(run, "interactions", "user_id")
    assert HUGE_ITEM in ids(run, "items", "item_id")
    assert len(recs_by_user(run)[HUGE_USER]) == 5


def all_integer_ids(d: Data) -> None:
    # Plain integer ids everywhere (the numeric id order), with ids beyond int64 and negative.
    d.rewrite(lambda line: line if line.startswith("user") else re.sub(
        r"^u0*(\d+),0*(\d+),", r"\1,\2,", line))
    d.items.write_text("item,title,author\n" + "".join(
        f"{i},Item {i},author{i % 5}\n" for i in range(40)))
    d.append("".join(f"{u},{i},5,{TS}\n" for u in (HUGE_USER, "-3") for i in (1, 2, 3, 4)))
    d.append(f"1,{HUGE_ITEM},5,{TS}\n2,{HUGE_ITEM},5,{TS}\n")


def check_integer_ids(d: Data, run: Path) -> None:
    users = ids(run, "interactions", "user_id")
    assert {HUGE_USER, "-3", "0", "29"} <= users
    by_user = recs_by_user(run)
    assert len(by_user[HUGE_USER]) == 5 and len(by_user["-3"]) == 5
    assert HUGE_ITEM in ids(run, "items", "item_id")


def bad_weights(d: Data) -> None:
    d.append("".join(f"u0{n:02d},0039,{w},{TS}\n" for n, w in enumerate(
        ["-1", "nan", "inf", "-inf", "five", "", " 4 ", "NaN", "1e400"], start=1)))


def check_bad_weights(d: Data, run: Path) -> None:
    kept = [r for r in read(run, "interactions") if (r["user_id"], r["item_id"]) == (
        "u007", "0039")]
    assert [r["weight"] for r in kept] == [4.0]  # " 4 " is trimmed and kept


def future_timestamps(d: Data) -> None:
    now = datetime.now().timestamp()
    d.append(f"u001,0039,4,2999-01-01T00:00:00\nu002,0039,4,{int(now + 10 * 86400)}\n"
             f"u003,0039,4,{int(now + 12 * 3600)}\n")  # the last one is within tolerance


def iso_timestamps(d: Data) -> None:
    d.append("u001,0039,4,2020-09-13T12:26:40\nu002,0039,4,2020-09-13 12:26:40+02:00\n"
             "u003,0039,4,2020-09-13T12:26:40Z\nu004,0039,4,2020-09-13\n")


def check_iso(d: Data, run: Path) -> None:
    ts = {r["user_id"]: r["ts"] for r in read(run, "interactions") if r["item_id"] == "0039"}
    assert ts["u001"] == datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)  # naive text is UTC
    assert ts["u002"] == datetime(2020, 9, 13, 10, 26, 40, tzinfo=UTC)  # the offset is honoured
    assert ts["u003"] == datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)
    assert ts["u004"] == datetime(2020, 9, 13, tzinfo=UTC)


def garbage_timestamps(d: Data) -> None:
    d.append(f"u001,9000,4,yesterday\nu002,9000,4,13/13/2020\nu003,9000,4,\n"
             f"u004,9000,4,99999999999999\nu005,9000,4,{TS}.5\n")


def check_garbage_ts(d: Data, run: Path) -> None:
    kept = {r["user_id"]: r["ts"] for r in read(run, "interactions") if r["item_id"] == "9000"}
    assert kept["u003"] is None  # an empty time is a row without a time, not an error
    assert kept["u005"] == datetime(2020, 9, 13, 12, 26, 40, 500000, tzinfo=UTC)  # fractions
    # An epoch far beyond the calendar (year ~3 million) counts as unparseable.


def duplicate_rows(d: Data) -> None:
    body = d.lines()[1:11]
    d.append("".join(line + "\n" for line in body))  # ten exact repeats
    user, item, _, ts = body[0].split(",")
    d.append(f"{user},{item},1,{int(ts) + 60}\n{user},{item},2,{int(ts) - 60}\n")


def check_duplicates(d: Data, run: Path) -> None:
    rows = read(run, "interactions")
    assert len(rows) == N_ROWS
    user, item = d.lines()[1].split(",")[:2]
    assert [r["weight"] for r in rows if (r["user_id"], r["item_id"]) == (user, item)] == [1.0]


def one_interaction_user(d: Data) -> None:
    d.append(f"solo,0001,5,{TS}\n")


def check_one_interaction(d: Data, run: Path) -> None:
    recs = recs_by_user(run)["solo"]
    assert len(recs) == 5 and "0001" not in {r["item_id"] for r in recs}


def lonely_item(d: Data) -> None:
    d.append(f"u000,lonely,5,{TS}\n")


def check_lonely(d: Data, run: Path) -> None:
    items = {r["item_id"]: r["author_id"] for r in read(run, "items")}
    assert items["lonely"] == "item:lonely"  # no metadata: its own author
    assert len(read(run, "interactions")) == N_ROWS + 1


def one_author(d: Data) -> None:
    d.items.write_text("item,title,author\n" + "".join(
        f"0{i:03d},Item {i},the-only-author\n" for i in range(40)))


def check_one_author(d: Data, run: Path) -> None:
    # Over-cap items are deferred, not dropped: with one author the lists still fill up.
    by_user = recs_by_user(run)
    assert len(by_user) == 30 and all(len(r) == 5 for r in by_user.values())
    # author_id is the normalised name; the name as written is kept for display.
    assert ids(run, "recommendations", "author_id") == {"the_only_author"}
    assert ids(run, "items", "author") == {"the-only-author"}


def very_long_line(d: Data) -> None:
    d.append(f"u001,0039,4,{'x' * TEN_MB}\nu002,0039,4,{TS}\n")


def check_long_line(d: Data, run: Path) -> None:
    (bad,) = read(run, "rejected")
    assert bad["raw"].startswith("u001, 0039, 4, xxx") and len(bad["raw"]) == 1000  # truncated
    assert ("u002", "0039") in {(r["user_id"], r["item_id"]) for r in read(run, "interactions")}


def crlf(d: Data) -> None:
    d.ratings.write_bytes(d.ratings.read_bytes().replace(b"\n", b"\r\n"))
    d.items.write_bytes(d.items.read_bytes().replace(b"\n", b"\r\n"))


def check_crlf(d: Data, run: Path) -> None:
    for table, column in [("interactions", "user_id"), ("interactions", "item_id"),
                          ("items", "author_id")]:
        assert not any("\r" in v for v in ids(run, table, column))
    assert len(read(run, "interactions")) == N_ROWS


def padded_fields(d: Data) -> None:
    d.rewrite(lambda line: line if line.startswith("user") else " , ".join(line.split(",")))


def check_padded(d: Data, run: Path) -> None:
    assert ids(run, "interactions", "user_id") == {f"u{u:03d}" for u in range(30)}


def gzipped(d: Data) -> None:
    target = d.folder / "ratings.csv.gz"
    target.write_bytes(gzip.compress(d.ratings.read_bytes()))
    d.source["path"] = str(target)


def latin1_declared(d: Data) -> None:
    d.items.write_bytes(d.items.read_text().replace("Item 1,", "Caf\xe9 1,").encode("latin-1"))
    d.source["items"][0]["encoding"] = "latin-1"


def check_latin1(d: Data, run: Path) -> None:
    titles = {r["item_id"]: r["title"] for r in read(run, "items")}
    assert titles["0001"] == "Caf\xe9 1"


def check_float_ids(d: Data, run: Path) -> None:
    users = ids(run, "interactions", "user_id")
    assert users == {str(u) for u in range(30)}  # "0".."29", never "0.0"
    items = read(run, "items")
    assert all(r["title"] == f"Item {r['item_id']}" for r in items)  # all matched metadata
    assert not any(r["author_id"].startswith("item:") for r in items)


OVERFLOW = "summed weight of a repeated pair is infinite"


def summed_weights_overflow(d: Data) -> None:
    d.source["duplicates"] = "sum"
    d.append(f"u001,9001,1e308,{TS}\nu002,9001,5,{TS}\nu001,9001,1e308,{TS + 1}\n")


def check_no_inf(d: Data, run: Path) -> None:
    weights = {(r["user_id"], r["item_id"]): r["weight"] for r in read(run, "interactions")}
    assert ("u001", "9001") not in weights and weights[("u002", "9001")] == 5.0
    assert all(w < float("inf") for w in weights.values())


def conflicting_authors(d: Data) -> None:
    # 0001 is listed twice: first as by "zed" (line 1), later as by author1 (the tiny default).
    lines = d.items.read_text().splitlines()
    d.items.write_text("\n".join([lines[0], "0001,Item 1 (first),zed", *lines[1:]]) + "\n")


def check_conflicting_authors(d: Data, run: Path) -> None:
    items = {r["item_id"]: r for r in read(run, "items")}
    assert (items["0001"]["author_id"], items["0001"]["title"]) == ("zed", "Item 1 (first)")
    assert items["0006"]["author_id"] == "author1"


def author_names_in_many_spellings(d: Data) -> None:
    # Items of author 0 are spelled four ways: one real author for the cap.
    spellings = ["Jane Doe", "JANE DOE", " jane   doe ", "Jane Doe."]
    d.items.write_text("item,title,author\n" + "".join(
        f"0{i:03d},Item {i},{spellings[(i // 5) % 4] if i % 5 == 0 else f'author{i % 5}'}\n"
        for i in range(40)))


def check_author_names(d: Data, run: Path) -> None:
    items = {r["item_id"]: r for r in read(run, "items")}
    jane = {i for i, r in items.items() if int(i) % 5 == 0}
    assert {items[i]["author_id"] for i in jane} == {"jane_doe"}
    assert {items[i]["author"] for i in jane} == {"Jane Doe"}  # the name as first seen
    for user, recs in recs_by_user(run).items():
        assert sum(r["author_id"] == "jane_doe" for r in recs) <= 2, user  # the cap holds


def no_timestamp_key(d: Data) -> None:
    del d.source["timestamp"]  # the file's "ts" column is ignored: "no time stamps"


def check_no_timestamps(d: Data, run: Path) -> None:
    assert all(r["ts"] is None for r in read(run, "interactions"))


def no_weight_key(d: Data) -> None:
    del d.source["weight"]


def check_no_weights(d: Data, run: Path) -> None:
    assert {r["weight"] for r in read(run, "interactions")} == {1.0}


def utc_timestamps(d: Data) -> None:
    d.append("u001,0039,4,2020-09-13 14:26:40+02:00\n")


def check_utc(d: Data, run: Path) -> None:
    schema = pq.read_schema(run / "interactions.parquet")
    assert str(schema.field("ts").type) == "timestamp[us, tz=UTC]"
    kept = {r["user_id"]: r["ts"] for r in read(run, "interactions") if r["item_id"] == "0039"}
    assert kept["u001"] == datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)


FATAL = [
    Case("empty-file", empty_file, r"is empty; it needs a header"),
    Case("header-only", header_only, r"has no data rows \(header only\?\)"),
    Case("missing-column", missing_column,
         r"column 'rating' \(the weight column\) is missing; the file has columns "
         r"\['user', 'item', 'ts'\]"),
    Case("misnamed-column-in-config", misnamed_column,
         r"column 'score' \(the weight column\) is missing.*Set `weight = "),
    Case("wrong-delimiter", wrong_delimiter,
         r"column 'user' \(the user column\) is missing; the file has columns "
         r"\['user;item;rating;ts'\].*delimiter"),
    Case("non-utf8-bytes", non_utf8_bytes,
         r"line 362 of the file is malformed \(invalid encoding.*not valid UTF-8: set "
         r"encoding = \"latin-1\""),
    Case("ragged-row-extra-field", ragged_extra_field,
         r"line 362 of the file is malformed \(too many columns: Expected Number of Columns: 4 "
         r"Found: 5\); fix or remove that row"),
    Case("ragged-row-missing-field", ragged_missing_field,
         r"line 100 of the file is malformed \(missing columns: Expected Number of Columns: 4 "
         r"Found: 2\)"),
    Case("unterminated-quote", unterminated_quote,
         r"could not be parsed \(.*\); check the delimiter, quoting"),
    Case("path-does-not-exist", path_missing, r"interactions file .* does not exist",
         names=case_folder_named("nope.csv")),
    Case("directory-instead-of-file", path_is_directory,
         r"interactions path .* is a directory; point at the file inside it",
         names=case_folder_named("ratings_dir")),
    Case("unreadable-permissions", unreadable,
         r"interactions file .* is not readable; fix its permissions", skip_if=not_root),
    Case("items-file-missing", items_missing, r"items file .* does not exist",
         names=case_folder_named("no_items.csv")),
    Case("items-file-missing-column", items_missing_column,
         r"column 'director' \(the author column\) is missing",
         names=case_folder_named("items.csv")),
    Case("items-file-empty", items_empty, r"items file .* is empty",
         names=case_folder_named("items.csv")),
    Case("config-typo-key", config_typo_key,
         r"unknown key 'diversify.max_per_autor' \(check its spelling",
         names=case_folder_named("cfg.toml")),
    Case("config-typo-source-key", config_typo_source_key, r"unknown key 'source.wieght'",
         names=case_folder_named("cfg.toml")),
    Case("config-out-of-range", config_out_of_range,
         r"diversify.max_per_author: Input should be greater than or equal to 1 \(got 0\)",
         names=case_folder_named("cfg.toml")),
    Case("config-fraction-out-of-range", config_fraction_out_of_range,
         r"source.max_rejected_fraction: Input should be less than or equal to 1 \(got 1.5\)",
         names=case_folder_named("cfg.toml")),
    Case("config-unknown-choice", config_unknown_choice,
         r"source.duplicates: Input should be 'last', 'first', 'sum', 'max' or 'mean'",
         names=case_folder_named("cfg.toml")),
    Case("config-names-need-header-false", config_names_with_header,
         r"`names` is for files without a header: set header = false",
         names=case_folder_named("cfg.toml")),
    Case("config-not-toml", config_not_toml, r"is not valid TOML",
         names=case_folder_named("cfg.toml")),
    Case("too-many-bad-rows", too_many_bad_rows,
         r"10 of 370 rows rejected, more than max_rejected_fraction=0.01"),
    Case("every-row-bad", every_row_bad,
         rf"all {N_ROWS} rows were rejected \(\[\('weight is not a number', {N_ROWS}\)\]\)"),
    Case("float-ids-beyond-2-53", huge_float_ids,
         r"id column 'user' is stored as DOUBLE and holds 1 values of magnitude 2\^53 or more "
         r".*distinct ids may already have collapsed.*as integers \(int64\) or strings",
         names=parquet_named),
    Case("milliseconds-read-as-seconds", ms_read_as_seconds,
         r"column 'ts' look like milliseconds, not seconds: read as seconds 360 of 360 lie in "
         r"the future .*Set timestamp_unit = \"ms\""),
    Case("seconds-read-as-milliseconds", seconds_read_as_ms,
         r"column 'ts' look like seconds, not milliseconds: read as milliseconds 360 of 360 "
         r"fall before 1971 .*Set timestamp_unit = \"s\""),
    Case("named-timestamp-column-missing", named_timestamp_missing,
         r"column 'event_time' \(the timestamp column\) is missing"),
]

SKIPPABLE = [
    Case("extra-columns", extra_columns),
    Case("quoted-delimiters-and-newlines", quoted_delimiters_and_newlines,
         check=check_quoted),
    Case("utf8-bom", bom, check=check_bom),
    Case("null-and-empty-ids", null_ids,
         rejected={"missing user id": 3, "missing item id": 1}, lines=[361, 362, 363, 364]),
    Case("ids-leading-zeros-and-letters", verbatim_ids, check=check_verbatim),
    Case("huge-ids-beyond-int64", huge_ids, check=check_huge),
    Case("all-integer-ids-with-huge-and-negative", all_integer_ids, check=check_integer_ids),
    Case("negative-nan-inf-and-text-weights", bad_weights,
         rejected={"negative weight": 1, "weight is NaN or infinite": 5,
                   "weight is not a number": 1, "missing weight": 1},
         lines=[361, 362, 363, 364, 365, 366, 368, 369], check=check_bad_weights),
    Case("timestamps-in-the-future", future_timestamps,
         rejected={"timestamp in the future": 2}, lines=[361, 362]),
    Case("iso-timestamp-strings", iso_timestamps, check=check_iso),
    Case("garbage-timestamp-strings", garbage_timestamps,
         rejected={"unparseable timestamp": 3}, lines=[361, 362, 364], check=check_garbage_ts),
    Case("duplicate-rows", duplicate_rows, check=check_duplicates),
    Case("user-with-one-interaction", one_interaction_user, check=check_one_interaction),
    Case("item-nobody-else-has", lonely_item, check=check_lonely),
    Case("catalogue-with-one-author", one_author, check=check_one_author),
    Case("very-long-line-10mb", very_long_line,
         rejected={"unparseable timestamp": 1}, lines=[361], check=check_long_line),
    Case("crlf-line-endings", crlf, check=check_crlf),
    Case("padded-fields", padded_fields, check=check_padded),
    Case("gzip-compressed", gzipped),
    Case("latin1-declared", latin1_declared, check=check_latin1),
    Case("float-ids-in-parquet", float_ids_parquet, check=check_float_ids),
    Case("summed-weights-overflow", summed_weights_overflow, rejected={OVERFLOW: 2},
         lines=[361, 363], check=check_no_inf),
    Case("items-with-conflicting-authors", conflicting_authors,
         check=check_conflicting_authors),
    Case("author-names-in-many-spellings", author_names_in_many_spellings,
         check=check_author_names),
    Case("source-without-timestamp-key", no_timestamp_key, check=check_no_timestamps),
    Case("source-without-weight-key", no_weight_key, check=check_no_weights),
    Case("timestamps-are-utc", utc_timestamps, check=check_utc),
]


def prepare(case: Case, tmp_path: Path) -> tuple[Data, Path]:
    """The tiny data and a fast config in tmp_path, broken by `case`; returns (data, config)."""
    if reason := case.skip_if():
        pytest.skip(reason)
    folder = tmp_path / "case"
    folder.mkdir()
    raw: dict[str, Any] = tiny_config_dict(folder)
    raw.pop("output")  # --output on the command line
    raw["ranking"] = "fusion"
    raw["evaluation"] = {"enabled": False}
    data = Data(folder, folder / "ratings.csv", folder / "items.csv", raw)
    case.build(data)
    config = folder / "cfg.toml"
    config.write_text(data.toml_text if data.toml_text is not None else to_toml(data.raw))
    return data, config


def invoke(config: Path, out: Path) -> Any:
    return CliRunner().invoke(app, ["run", "--engine", "local", "--config", str(config),
                                    "--output", str(out)])


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in FATAL])
def test_fatal_input_exits_2_names_the_cause_and_publishes_nothing(
        case: Case, tmp_path: Path) -> None:
    data, config = prepare(case, tmp_path)
    out = tmp_path / "out"
    result = invoke(config, out)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error: ") and "Traceback" not in message
    assert re.search(case.error or "", message, flags=re.DOTALL), message
    named = case.names(data) if case.names else str(data.ratings)
    assert named in message
    assert not (out / "latest").exists()
    runs = out / "runs"
    assert not runs.is_dir() or list(runs.iterdir()) == []  # no run folder, no staging left


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in SKIPPABLE])
def test_skippable_input_publishes_with_bad_rows_quarantined(
        case: Case, tmp_path: Path) -> None:
    data, config = prepare(case, tmp_path)
    out = tmp_path / "out"
    result = invoke(config, out)
    assert result.exit_code == 0, result.output
    run = out / "latest"
    assert run.is_symlink() and (run / "manifest.json").is_file()
    rejected = read(run, "rejected")
    assert Counter(r["reason"] for r in rejected) == Counter(case.rejected)
    if case.lines is not None:
        assert [r["line"] for r in rejected] == case.lines
    assert {r["file"] for r in rejected} <= {str(data.source["path"])}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["rejected_rows"] == sum(case.rejected.values())
    assert manifest["rows"]["rejected"] == len(rejected)
    users = ids(run, "interactions", "user_id")
    recs = recs_by_user(run)
    assert set(recs) == users and all(len(r) == 5 for r in recs.values())
    if case.check:
        case.check(data, run)


def test_the_suite_is_big_enough() -> None:
    assert len(FATAL) + len(SKIPPABLE) >= 20
    assert len({c.id for c in FATAL + SKIPPABLE}) == len(FATAL) + len(SKIPPABLE)
