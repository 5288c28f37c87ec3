"""Ingest at the edge: presets on the shared data, ids kept verbatim, bad input named and fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.errors import DataError, DataWarning
from pipelines.ingest import ItemsFile, SourceConfig, file_sha256, ingest, preset_source


def source(path: Path, **kw: object) -> SourceConfig:
    base: dict[str, object] = dict(path=path, user="user", item="item", weight="rating",
                                   timestamp="ts", items=[])
    return SourceConfig.model_validate({**base, **kw})


def write(tmp_path: Path, text: str | bytes, name: str = "r.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_embedded_default_loads_with_directors() -> None:
    res = ingest(SourceConfig())
    assert res.interactions.num_rows == 100_836
    assert res.report["users"] == 610 and res.rejected.num_rows == 0
    authors = dict(zip(res.items["item_id"].to_pylist(), res.items["author_id"].to_pylist(),
                       strict=True))
    assert authors["1"] == "john_lasseter"  # Toy Story
    # Items without a director are their own author.
    assert sum(a.startswith("item:") for a in authors.values()) == res.report[
        "items_without_author"]


@pytest.mark.slow
@pytest.mark.parametrize("preset,folder,kw,rows", [
    ("movielens-latest", "ml-latest-small", {}, 100_836),
    ("movielens-1m", "ml-1m", {"path": "ratings_users0001-2999.dat.gz"}, 487_650),
    ("movielens-100k", "ml-100k", {}, 100_000),
    ("lastfm", "hetrec2011-lastfm-2k", {}, 92_834),
])
def test_presets_read_the_shared_data(shared_data: Path, preset: str, folder: str,
                                      kw: dict[str, object], rows: int) -> None:
    res = ingest(preset_source(preset, shared_data / folder, **kw))
    assert res.interactions.num_rows == rows
    assert res.rejected.num_rows == 0
    assert res.items.num_rows == res.report["items"]
    titles = res.items["title"].drop_null()
    assert len(titles) > 0.9 * res.items.num_rows


def test_ids_survive_verbatim(tmp_path: Path) -> None:
    huge = str(2**64 + 7)
    path = write(tmp_path, f"user,item,rating,ts\n007,0042,5,1\nA-1,ISBN0X,3,2\n{huge},0042,4,3\n")
    res = ingest(source(path))
    assert set(res.interactions["user_id"].to_pylist()) == {"007", "A-1", huge}
    assert set(res.interactions["item_id"].to_pylist()) == {"0042", "ISBN0X"}


@pytest.mark.parametrize("rule,weight", [("last", 2.0), ("first", 5.0), ("sum", 7.0),
                                         ("max", 5.0), ("mean", 3.5)])
def test_duplicates_follow_the_documented_rule(tmp_path: Path, rule: str, weight: float
                                               ) -> None:
    path = write(tmp_path, "user,item,rating,ts\nu,i,5,100\nu,i,2,200\nu,j,1,50\n")
    res = ingest(source(path, duplicates=rule))
    got = {r["item_id"]: r["weight"] for r in res.interactions.to_pylist()}
    assert got == {"i": weight, "j": 1.0}
    assert res.report["duplicate_rows_merged"] == 1


def test_bad_rows_are_quarantined_with_reasons(tmp_path: Path) -> None:
    text = ("user,item,rating,ts\nu1,i1,4,100\n,i2,4,100\nu2,,4,100\nu3,i3,abc,100\n"
            "u4,i4,-1,100\nu5,i5,nan,100\nu6,i6,inf,100\nu7,i7,4,notatime\nu8,i8,4,99999999999\n"
            "u9,i9,4,2001-09-09T01:46:40\nu10,i10,4,100\nu11,i11,4,100\nu12,i12,4,100\n"
            "u13,i13,4,100\nu14,i14,4,100\nu15,i15,4,100\nu16,i16,4,100\nu17,i17,4,100\n")
    res = ingest(source(path := write(tmp_path, text)))
    reasons = {r["line"]: r["reason"] for r in res.rejected.to_pylist()}
    assert reasons == {2: "missing user id", 3: "missing item id", 4: "weight is not a number",
                       5: "negative weight", 6: "weight is NaN or infinite",
                       7: "weight is NaN or infinite", 8: "unparseable timestamp",
                       9: "timestamp in the future"}
    assert res.rejected["file"][0].as_py() == str(path)
    assert res.interactions.num_rows == 18 - 8
    assert res.report["rows_rejected"] == 8


@pytest.mark.parametrize("name,content,kw,message", [
    ("empty", "", {}, "is empty"),
    ("header only", "user,item,rating,ts\n", {}, "no data rows"),
    ("missing column", "user,item,ts\nu,i,1\n", {}, "column 'rating' (the weight column)"),
    ("misnamed user column", "usr,item,rating,ts\nu,i,1,1\n", {}, "(the user column)"),
    ("wrong delimiter", "user;item;rating;ts\nu;i;1;1\n", {}, "column 'user'"),
    ("all rows bad", "user,item,rating,ts\nu,i,x,1\nv,j,y,1\n", {}, "all 2 rows were rejected"),
    ("most rows bad", "user,item,rating,ts\nu,i,x,1\nv,j,y,1\nw,k,1,1\n", {},
     "more than max_rejected_fraction"),
    ("non-utf8", b"user,item,rating,ts\nu,caf\xe9,1,1\n", {}, "latin-1"),
])
def test_fatal_input_names_file_and_fix(tmp_path: Path, name: str, content: str | bytes,
                                        kw: dict[str, object], message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(DataError) as err:
        ingest(source(path, **kw))
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ingest(source(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="is a directory"):
        ingest(source(tmp_path))


def test_quoted_fields_bom_and_extra_columns(tmp_path: Path) -> None:
    text = '\ufeffuser,item,rating,ts,extra\n"u,1","i\n2",4,1,x\nu2,i3,5,2,y\n'
    res = ingest(source(write(tmp_path, text)))
    assert res.interactions["user_id"].to_pylist() == ["u,1", "u2"]
    assert res.interactions["item_id"].to_pylist() == ["i\n2", "i3"]


def test_items_without_metadata_are_their_own_author(tmp_path: Path) -> None:
    ratings = write(tmp_path, "user,item,rating,ts\nu,i1,1,1\nu,i2,1,1\n")
    meta = write(tmp_path, "item,title,author\ni1,One,alice\n", "items.csv")
    res = ingest(source(ratings, items=[ItemsFile(path=meta, item="item", title="title",
                                                  author="author")]))
    got = {r["item_id"]: (r["title"], r["author_id"]) for r in res.items.to_pylist()}
    assert got == {"i1": ("One", "alice"), "i2": (None, "item:i2")}


def test_parquet_source_and_no_weight_or_time(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"u": [1, 2], "i": [10, 10]}), tmp_path / "x.parquet")
    res = ingest(SourceConfig(path=tmp_path / "x.parquet", user="u", item="i", weight=None,
                              timestamp=None, items=[]))
    assert res.interactions["weight"].to_pylist() == [1.0, 1.0]
    assert res.report["has_timestamps"] is False


# ------------------------------------------------- float ids, overflow, units, authors ----


def parquet(tmp_path: Path, name: str = "r.parquet", **columns: object) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / name
    pq.write_table(pa.table(columns), path)  # type: ignore[arg-type]
    return path


def test_integral_float_ids_in_parquet_become_integer_text(tmp_path: Path) -> None:
    import pyarrow as pa

    path = parquet(tmp_path, u=pa.array([1.0, 2.0, 2.0, float("nan")]),
                   i=pa.array([10.0, 10.0, 20.0, 10.0], pa.float32()), r=[5.0, 4.0, 3.0, 1.0])
    meta = write(tmp_path, "item,title\n10,Ten\n20,Twenty\n", "items.csv")
    with pytest.warns(DataWarning) as caught:
        res = ingest(SourceConfig(path=path, user="u", item="i", weight="r", items=[
            ItemsFile(path=meta, item="item", title="title")]))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all(str(path) in m for m in messages)
    assert "id column 'u' is stored as DOUBLE; its 3 values were converted to integer text " \
           "('1.0' -> '1')" in messages[0]
    assert "id column 'i' is stored as FLOAT; its 4 values" in messages[1]
    assert res.interactions["user_id"].to_pylist() == ["1", "2", "2"]
    assert res.interactions["item_id"].to_pylist() == ["10", "10", "20"]
    assert res.items["title"].to_pylist() == ["Ten", "Twenty"]  # they match the CSV's ids
    assert [(r["line"], r["reason"]) for r in res.rejected.to_pylist()] == [
        (4, "missing user id")]  # NaN is no id
    assert res.report["id_conversions"] == {str(path): {"u": 3, "i": 4}}


def test_integral_decimal_ids_become_integer_text(tmp_path: Path) -> None:
    import decimal

    import pyarrow as pa

    path = parquet(tmp_path, u=pa.array([decimal.Decimal("7.00")], pa.decimal128(5, 2)),
                   i=["a"])
    with pytest.warns(DataWarning, match="DECIMAL"):
        res = ingest(SourceConfig(path=path, user="u", item="i"))
    assert res.interactions["user_id"].to_pylist() == ["7"]


@pytest.mark.parametrize("values,dtype,message", [
    ([2.0**53 + 2, 1.0], "float64", r"magnitude 2\^53 or more \(e.g. 9007199254740994"),
    ([-(2.0**53), 1.0], "float64", r"magnitude 2\^53 or more"),
    ([2.0**24, 1.0], "float32", r"stored as FLOAT .* magnitude 2\^24 or more"),
    ([1.5, 1.0], "float64", r"not whole numbers \(e.g. 1.5\)"),
    ([float("inf"), 1.0], "float64", r"not whole numbers \(e.g. inf\)"),
])
def test_inexact_float_ids_are_an_error(tmp_path: Path, values: list[float], dtype: str,
                                        message: str) -> None:
    import pyarrow as pa

    path = parquet(tmp_path, u=pa.array(values, dtype), i=["a", "b"])
    with pytest.raises(DataError, match=message) as err:
        ingest(SourceConfig(path=path, user="u", item="i"))
    assert str(path) in str(err.value) and "id column 'u'" in str(err.value)
    assert "as integers (int64) or strings" in str(err.value)


def test_summed_weights_that_overflow_are_quarantined(tmp_path: Path) -> None:
    text = "user,item,rating,ts\nu,i,1e308,1\nu,j,1,1\nu,i,1e308,2\nv,i,1e308,1\nv,j,2,1\n"
    res = ingest(source(write(tmp_path, text), duplicates="sum"))
    assert [(r["line"], r["reason"]) for r in res.rejected.to_pylist()] == [
        (1, "summed weight of a repeated pair is infinite"),
        (3, "summed weight of a repeated pair is infinite")]
    got = {(r["user_id"], r["item_id"]): r["weight"] for r in res.interactions.to_pylist()}
    assert got == {("u", "j"): 1.0, ("v", "i"): 1e308, ("v", "j"): 2.0}
    assert res.report["rejected_by_reason"] == {"summed weight of a repeated pair is infinite": 2}


def test_mean_of_huge_weights_does_not_overflow(tmp_path: Path) -> None:
    text = "user,item,rating,ts\nu,i,1e308,1\nu,i,1.5e308,2\nu,j,1,1\n"
    res = ingest(source(write(tmp_path, text), duplicates="mean"))
    got = {r["item_id"]: r["weight"] for r in res.interactions.to_pylist()}
    assert got == {"i": 1.25e308, "j": 1.0} and res.rejected.num_rows == 0


NOW = 1_700_000_000.0  # 2023-11-14


@pytest.mark.parametrize("stamps,unit,fix,where", [
    ([1_600_000_000_000, 1_650_000_000_000], "s", 'timestamp_unit = "ms"',
     r"read as seconds 2 of 2 lie in the future \(years 52671 to 54256\), read as "
     r"milliseconds they fall in 2020 to 2022"),
    ([1_600_000_000, 1_650_000_000], "ms", 'timestamp_unit = "s"',
     r"read as milliseconds 2 of 2 fall before 1971 \(years 1970\), read as seconds they "
     r"fall in 2020 to 2022"),
])
def test_wrong_timestamp_unit_names_the_fix(tmp_path: Path, stamps: list[int], unit: str,
                                            fix: str, where: str) -> None:
    rows = "".join(f"u{n},i,1,{t}\n" for n, t in enumerate(stamps))
    path = write(tmp_path, "user,item,rating,ts\n" + rows)
    with pytest.raises(DataError, match=where) as err:
        ingest(source(path, timestamp_unit=unit), now=NOW)
    assert fix in str(err.value) and str(path) in str(err.value)
    assert "column 'ts'" in str(err.value)


def test_right_timestamp_unit_and_a_few_odd_stamps_pass(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    rows = "".join(f"u{n},i,1,{1_600_000_000_000 + n}\n" for n in range(9)) + "x,i,1,1\n"
    res = ingest(source(write(tmp_path, "user,item,rating,ts\n" + rows), timestamp_unit="ms"),
                 now=NOW)
    assert res.interactions.num_rows == 10  # one 1970 stamp out of ten is not a wrong unit
    assert res.interactions["ts"][0].as_py() == datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)


def test_ts_is_utc_aware(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    import pyarrow as pa

    text = "user,item,rating,ts\nu,a,1,1600000000\nu,b,1,2020-09-13 14:26:40+02:00\nu,c,1,\n"
    res = ingest(source(write(tmp_path, text)))
    assert res.interactions.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    want = datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)
    assert res.interactions["ts"].to_pylist() == [want, want, None]


def items_source(tmp_path: Path, *metas: str, **kw: object) -> SourceConfig:
    ratings = write(tmp_path, "user,item,rating,ts\n" + "".join(
        f"u,i{n},1,1\n" for n in range(1, 6)))
    files = [ItemsFile(path=write(tmp_path, text, f"items{n}.csv"), item="item", title="title",
                       author="author", **kw)  # type: ignore[arg-type]
             for n, text in enumerate(metas)]
    return source(ratings, items=files)


@pytest.mark.parametrize("first,second", [("bob", "alice"), ("alice", "bob")])
def test_conflicting_authors_first_file_first_line_wins(tmp_path: Path, first: str,
                                                        second: str) -> None:
    meta = (f"item,title,author\ni1,One,{first}\ni2,Two,carol\ni1,One again,{second}\n"
            "i2,,carol\n")
    other = "item,title,author\ni1,Uno,dave\ni3,Three,erin\n"
    with pytest.warns(DataWarning, match=r"1 item ids are listed under more than one author "
                                         rf"\(e.g. item 'i1': \['{first}', '{second}', 'dave'\]"):
        res = ingest(items_source(tmp_path, meta, other))
    got = {r["item_id"]: (r["title"], r["author_id"]) for r in res.items.to_pylist()}
    assert got == {"i1": ("One", first), "i2": ("Two", "carol"), "i3": ("Three", "erin"),
                   "i4": (None, "item:i4"), "i5": (None, "item:i5")}
    assert res.report["author_conflicts"] == 1  # i1 only: i2 repeats the same author


def test_author_names_are_normalised_and_the_first_name_kept(tmp_path: Path) -> None:
    meta = ("item,title,author\ni1,A,John Grisham\ni2,B,JOHN  GRISHAM\ni3,C,\"john grisham.\"\n"
            "i4,D,\uff2a\uff4f\uff48\uff4e Grisham\ni5,E,Stephen King\n")
    res = ingest(items_source(tmp_path, meta))
    rows = {r["item_id"]: (r["author_id"], r["author"]) for r in res.items.to_pylist()}
    assert rows == {f"i{n}": ("john_grisham", "John Grisham") for n in range(1, 5)} | {
        "i5": ("stephen_king", "Stephen King")}
    assert res.report["author_names_merged"] == 3


def test_author_normalisation_can_be_turned_off(tmp_path: Path) -> None:
    meta = "item,title,author\ni1,A,John Grisham\ni2,B,JOHN  GRISHAM\n"
    res = ingest(items_source(tmp_path, meta, normalize_authors=False))
    rows = {r["item_id"]: (r["author_id"], r["author"]) for r in res.items.to_pylist()}
    assert rows["i1"] == ("John Grisham", "John Grisham")
    assert rows["i2"] == ("JOHN  GRISHAM", "JOHN  GRISHAM")
    assert res.report["author_names_merged"] == 0


def test_omitted_weight_and_timestamp_mean_the_file_has_none(tmp_path: Path) -> None:
    # Columns named like the old defaults are not picked up unless named.
    path = write(tmp_path, "user,item,rating,timestamp\nu,i,5,1600000000\nu,j,3,1600000000\n")
    cfg = SourceConfig.model_validate({"path": path, "user": "user", "item": "item"})
    assert (cfg.weight, cfg.timestamp, cfg.items) == (None, None, [])
    res = ingest(cfg)
    assert res.interactions["weight"].to_pylist() == [1.0, 1.0]
    assert res.interactions["ts"].null_count == 2 and res.report["has_timestamps"] is False


def test_a_named_timestamp_column_that_is_missing_stays_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "user,item,rating\nu,i,5\n")
    with pytest.raises(DataError, match=r"column 'time' \(the timestamp column\) is missing"):
        ingest(source(path, timestamp="time"))


def test_embedded_defaults_apply_only_without_a_path(tmp_path: Path) -> None:
    cfg = SourceConfig(duplicates="sum")
    assert (cfg.weight, cfg.timestamp, len(cfg.items)) == ("rating", "timestamp", 1)
    assert cfg.items[0].author == "director_id"
    assert SourceConfig.model_validate(cfg.model_dump()) == cfg  # a dump round-trips
    assert SourceConfig(path=tmp_path / "x.csv").items == []
    ml1m = preset_source("movielens-1m", tmp_path)
    assert (ml1m.weight, ml1m.timestamp) == ("rating", "timestamp")
    assert preset_source("lastfm", tmp_path).timestamp is None


def test_fingerprint_is_the_sha256_of_the_bytes_read(tmp_path: Path) -> None:
    import hashlib

    cfg = items_source(tmp_path, "item,title,author\ni1,A,x\n")
    res = ingest(cfg)
    files = [cfg.path, cfg.items[0].path]
    assert res.fingerprint == {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert file_sha256(cfg.path) == res.fingerprint[str(cfg.path)]


def test_a_file_changed_while_read_is_an_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.ingest as mod

    path = write(tmp_path, "user,item,rating,ts\nu,i,1,1\n")
    real = mod._read_table

    def read_while_appending(*args: object, **kw: object) -> list[str]:
        cols = real(*args, **kw)  # type: ignore[arg-type]
        with open(path, "a") as handle:  # another process is still writing the file
            handle.write("v,j,1,2\n")
        return cols

    monkeypatch.setattr(mod, "_read_table", read_while_appending)
    with pytest.raises(DataError, match=r"changed while it was being read .* rerun once") as err:
        ingest(source(path))
    assert str(path) in str(err.value)


def test_report_counts_what_ingest_did(tmp_path: Path) -> None:
    import json

    ratings = write(tmp_path, "user,item,rating,ts\nu,i1,1,1\nu,i1,2,2\nu,i2,x,1\n,i2,1,1\n"
                              "v,i2,1,1\nv,i3,1,1\nw,i1,1,1\n")
    meta = write(tmp_path, "item,title,author\ni1,A,Ann Lee\ni2,B,ANN LEE\ni1,A,Bo\n",
                 "items.csv")
    with pytest.warns(DataWarning, match="more than one author"):
        res = ingest(source(ratings, items=[ItemsFile(path=meta, item="item", title="title",
                                                      author="author")]))
    assert res.report == {
        "rows_read": 7, "rows_rejected": 2,
        "rejected_by_reason": {"missing user id": 1, "weight is not a number": 1},
        "duplicate_rows_merged": 1, "duplicate_rule": "last", "interactions": 4, "users": 3,
        "items": 3, "items_without_author": 1, "author_names_merged": 1, "author_conflicts": 1,
        "id_conversions": {}, "has_timestamps": True,
    }
    json.dumps(res.report)  # JSON-ready for the manifest and the Prefect artifact
