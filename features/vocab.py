"""IdVocab: the source's own ids (kept as text) to dense indices and back; name identity keys."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.errors import DataError


def _natural_order(ids: pa.Array) -> pa.Array:
    """Unique ids in a stable, human order: numeric when all ids are plain integers, else text.

    Plain integers (no sign, no leading zero) order by (length, text), which equals numeric order
    for any size, so ids beyond 2**63 still sort correctly and survive as text.
    """
    unique = pc.unique(ids.cast(pa.string()))
    if unique.null_count:
        raise DataError("ids contain nulls; drop or fix those rows before building a vocabulary")
    plain_int = pc.match_substring_regex(unique, r"^(0|[1-9][0-9]*)$")
    if pc.all(plain_int).as_py() if len(unique) else False:
        lengths = pc.utf8_length(unique)
        order = pc.sort_indices(
            pa.table({"n": lengths, "s": unique}),
            sort_keys=[("n", "ascending"), ("s", "ascending")],
        )
    else:
        order = pc.sort_indices(unique)
    return pc.take(unique, order)


def normalize_name(name: str) -> str:
    """The identity key of a person's name: same key, same author.

    Unicode NFKC, then case fold (NFKC again, so the key is stable), then every run of
    whitespace and punctuation (Unicode categories Z* and P*, control characters, `_`) becomes
    one `_`, trimmed at both ends: `"John  Grisham"`, `"JOHN GRISHAM"` and `"john_grisham"` all
    give `john_grisham`, `"J.R.R. Tolkien"` and `"J. R. R. Tolkien"` give `j_r_r_tolkien`.
    Letters, digits, marks and symbols are kept (accents are not stripped). A name made only of
    punctuation gives `""`.
    """
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    out: list[str] = []
    gap = False
    for ch in text:
        cat = unicodedata.category(ch)
        if ch.isspace() or cat[0] in "PZ" or cat == "Cc":
            gap = True
            continue
        if gap and out:
            out.append("_")
        gap = False
        out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class IdVocab:
    """Bijection between external ids (strings) and dense int32 indices in natural id order.

    The order makes "lower index" mean "lower id", which is the documented tie-break everywhere.
    """

    ids: pa.Array  # string, unique, natural order

    @classmethod
    def from_ids(cls, ids: pa.Array | pa.ChunkedArray) -> IdVocab:
        """Build from any column of ids (duplicates allowed)."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        return cls(_natural_order(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, ids: pa.Array | pa.ChunkedArray, *, strict: bool = True) -> np.ndarray:
        """Dense indices of `ids` (int32); unknown ids raise, or map to -1 when `strict=False`."""
        idx = pc.index_in(ids.cast(pa.string()), value_set=self.ids)
        if isinstance(idx, pa.ChunkedArray):
            idx = idx.combine_chunks()
        if idx.null_count:
            if strict:
                missing = pc.filter(ids, pc.is_null(idx))[:3].to_pylist()
                raise DataError(f"{idx.null_count} ids are not in the vocabulary, e.g. {missing}")
            idx = pc.fill_null(idx, -1)
        return idx.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

    def take(self, index: np.ndarray) -> pa.Array:
        """External ids at dense positions `index`."""
        return pc.take(self.ids, pa.array(np.asarray(index, dtype=np.int64)))
