"""Ingest at the edge: presets on the shared data, ids kept verbatim, bad input named and fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.errors import DataError
from pipelines.ingest import ItemsFile, SourceConfig, ingest, preset_source


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
