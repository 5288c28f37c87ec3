"""Benchmark: blockwise sparse Pearson vs scikit-surprise's `pearson` on ML-1M users 1-2999.

Run: `python bench/neighbours.py [--ratings PATH]`. The reference is scikit-surprise (the same
formula, means over co-rated items) when it is installed (`pip install scikit-surprise`), else
a straightforward per-pair numpy implementation on a sample of pairs. Values are compared where
both are defined; the speed ratio and the peak traced memory of each are printed.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from features.matrix import build_matrix  # noqa: E402
from models.neighbours import PearsonConfig, pearson_blocks  # noqa: E402
from pipelines.ingest import preset_source  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "ml-1m" / "ratings_users0001-2999.dat.gz"


def measure(fn, *args):  # type: ignore[no-untyped-def]
    """(result, seconds, peak traced MiB) of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def ours_dense(ratings: sp.csr_matrix, min_support: int) -> np.ndarray:
    """Our weights as a full (n, n) matrix, NaN where undefined (for the comparison only)."""
    n = ratings.shape[0]
    nb = pearson_blocks(ratings, PearsonConfig(k=n, threshold=-1.0,
                                               min_support=min_support))
    full = np.full((n, n), np.nan)
    full[nb.row, nb.neighbour] = nb.weight
    return full


def surprise_sim(ratings: sp.csr_matrix, min_support: int) -> tuple[np.ndarray, float]:
    """scikit-surprise's pearson similarity between rows, reordered to our row indices.

    Rows play surprise's "users" (the caller transposes for the item side), so the call is
    always user-based over the matrix it is given.
    """
    import pandas as pd
    from surprise import Dataset, Reader
    from surprise.similarities import pearson

    coo = ratings.tocoo()
    df = pd.DataFrame({"u": coo.row, "i": coo.col, "r": coo.data})
    data = Dataset.load_from_df(df, Reader(rating_scale=(0.5, 5)))
    ts = data.build_full_trainset()
    n_x, yr = ts.n_users, ts.ir
    raw = [ts.to_raw_uid(x) for x in range(ts.n_users)]
    start = time.perf_counter()
    sim = pearson(n_x, yr, min_support)
    elapsed = time.perf_counter() - start
    order = np.argsort(np.asarray(raw))
    sim = sim[np.ix_(order, order)]
    return sim, elapsed


def pair_reference(ratings: sp.csr_matrix, pairs: np.ndarray, min_support: int) -> np.ndarray:
    """Per-pair textbook Pearson (means over co-rated entries); NaN where undefined."""
    out = np.full(len(pairs), np.nan)
    rows = [ratings.getrow(i) for i in range(ratings.shape[0])]
    for k, (u, v) in enumerate(pairs):
        ru, rv = rows[u], rows[v]
        common, iu, iv = np.intersect1d(ru.indices, rv.indices, return_indices=True)
        if len(common) < min_support:
            continue
        a = ru.data[iu] - ru.data[iu].mean()
        b = rv.data[iv] - rv.data[iv].mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        if den > 1e-12:
            out[k] = (a * b).sum() / den
    return out


def compare(name: str, ratings: sp.csr_matrix, min_support: int) -> None:
    """Time both implementations on one side (users or items) and check agreement."""
    n = ratings.shape[0]
    print(f"\n== {name}: {n} rows, {ratings.nnz} ratings, min_support={min_support}")
    prod_cfg = PearsonConfig(k=50, min_support=min_support)
    _, t_top, m_top = measure(pearson_blocks, ratings, prod_cfg)
    print(f"ours, top-50 per row (production setting): {t_top:8.2f} s  peak {m_top:8.1f} MiB")
    full, t_full, m_full = measure(ours_dense, ratings, min_support)
    print(f"ours, every pair (dense result):           {t_full:8.2f} s  peak {m_full:8.1f} MiB")
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, n, size=(20_000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    ref, t_pairs, _ = measure(pair_reference, ratings, pairs, min_support)
    est = t_pairs / len(pairs) * n * (n - 1)
    got = full[pairs[:, 0], pairs[:, 1]]
    both = ~np.isnan(ref) & ~np.isnan(got)
    print(f"per-pair numpy reference on {len(pairs)} sampled pairs: {t_pairs:.2f} s "
          f"-> {est:.0f} s estimated for all pairs; max |diff| {np.abs(ref - got)[both].max():.2e}"
          f" on {both.sum()} pairs; ratio per-pair / ours (every pair): {est / t_full:.0f}x")
    try:
        (sim, t_core), t_ref, m_ref = measure(surprise_sim, ratings, min_support)
    except ImportError:
        print("scikit-surprise is not installed: only the per-pair reference was measured")
        return
    # surprise gives 0 where undefined; compare where ours is defined and surprise nonzero.
    np.fill_diagonal(sim, np.nan)
    both = ~np.isnan(full) & (sim != 0) & ~np.isnan(sim)
    diff = np.abs(full - sim)[both]
    print(f"reference: scikit-surprise pearson {t_core:8.2f} s (similarity only; "
          f"{t_ref:.2f} s with dataset build)  peak {m_ref:8.1f} MiB")
    print(f"max |diff| on {both.sum():,} pairs defined in both: {diff.max():.2e}")
    only_ours = (~np.isnan(full) & (sim == 0)).sum()
    print(f"pairs ours defines that surprise reports as 0: {only_ours:,} "
          "(weight exactly 0 in ours, or surprise's 0 sentinel)")
    print(f"speed ratio surprise / ours (every pair): {t_core / t_full:6.1f}x; "
          f"surprise / ours (top-50): {t_core / t_top:6.1f}x")


def main() -> None:
    """Load the ratings and compare both sides."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratings", type=Path, default=DEFAULT)
    parser.add_argument("--min-support", type=int, default=2)
    args = parser.parse_args()
    src = preset_source("movielens-1m", args.ratings.parent, path=args.ratings.name, items=[])
    from pipelines.ingest import ingest

    m = build_matrix(ingest(src).interactions)
    compare("user", m.weights, args.min_support)
    compare("item", m.weights.T.tocsr(), args.min_support)


if __name__ == "__main__":
    main()
