"""Benchmark: the offline evaluation table on ML-1M (users 1-2999) and the embedded data, plus EASE.

Run: `python bench/quality.py [--dataset ml1m|embedded|both]`. EASE (Steck 2019, closed form:
B = I - P diagMat(1 / diag(P)), P = (X^T X + lambda I)^-1, zero diagonal) is an outside
reference implemented here only. Lambda is chosen on a validation split of train.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from features.matrix import build_matrix  # noqa: E402
from pipelines.evaluate import (  # noqa: E402
    SplitConfig,
    evaluate_lists,
    split_last,
    top_k_from_scores,
)
from pipelines.ingest import ItemsFile, SourceConfig, ingest, preset_source  # noqa: E402
from pipelines.nightly import RunConfig  # noqa: E402
from pipelines.offline import evaluate_models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def ml1m_source() -> SourceConfig:
    """ML-1M users 1-2999 with titles and HetRec directors."""
    return preset_source(
        "movielens-1m", SHARED / "ml-1m", path="ratings_users0001-2999.dat.gz",
        items=[ItemsFile(path=SHARED / "ml-1m" / "movies.dat", format="dat", header=False,
                         encoding="latin-1", names=["item", "title", "genres"], item="item",
                         title="title"),
               ItemsFile(path=SHARED / "hetrec2011-movielens-2k" / "movie_directors.dat",
                         format="tsv", encoding="latin-1", item="movieID", author="directorID")])


def ease_lists(train: pa.Table, users: list[str], lam: float, k: int) -> pa.Table:
    """EASE top-k for `users`, excluding their train items."""
    m = build_matrix(train)
    x = m.binary
    gram = (x.T @ x).toarray() + lam * np.eye(x.shape[1])
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    idx = m.users.index(pa.array(users))
    scores = x[idx] @ b  # (users, items)
    scores[x[idx].toarray() > 0] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(len(users)), k)
    return top_k_from_scores(pa.table({
        "user_id": pa.array(np.asarray(users, dtype=object)[rows].tolist()),
        "item_id": m.items.take(top.ravel()),
        "score": pa.array(scores[rows, top.ravel()])}), k)


def run(name: str, source: SourceConfig, cfg: RunConfig) -> None:
    """Evaluate one data set and print the table."""
    print(f"\n## {name}")
    data = ingest(source)
    split_cfg = SplitConfig()
    split = split_last(data.interactions, split_cfg)
    inner = split_last(split.train, split_cfg)
    n_items = len(set(inner.train.column("item_id").to_pylist()))
    users_v = sorted(set(inner.test.column("user_id").to_pylist()))
    best = (-1.0, 0.0)
    for lam in (100.0, 300.0, 1000.0, 3000.0):
        ndcg = evaluate_lists(ease_lists(inner.train, users_v, lam, 20), inner.test,
                              data.items, n_items).ndcg_at_10
        print(f"EASE lambda={lam:g}: validation NDCG@10 {ndcg:.4f}")
        best = max(best, (ndcg, lam))
    users = sorted(set(split.test.column("user_id").to_pylist()))
    start = time.perf_counter()
    ease = ease_lists(split.train, users, best[1], 20)
    elapsed = time.perf_counter() - start
    print(f"EASE with lambda={best[1]:g} (chosen on validation): {elapsed:.1f} s")
    ev = evaluate_models(data.interactions, data.items, cfg.candidate_settings(), cfg.ranker,
                         cfg.fusion, cfg.diversify, split_cfg,
                         extra={f"EASE (lambda={best[1]:g})": ease})
    print(ev.report)


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=["ml1m", "embedded", "both"], default="both")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    cfg = RunConfig.from_toml(args.config) if args.config else RunConfig()
    if args.dataset in ("embedded", "both"):
        run("embedded MovieLens latest-small", SourceConfig(), cfg)
    if args.dataset in ("ml1m", "both"):
        run("ML-1M users 1-2999", ml1m_source(), cfg)


if __name__ == "__main__":
    main()
