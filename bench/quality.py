"""Benchmark: the offline evaluation table with EASE beside the product's models, per data set.

Run: `python bench/quality.py [--dataset embedded|ml1m|lastfm|series|all ...] [--config F]
[--work DIR]`.
Data: the embedded MovieLens latest-small (directors as authors), ML-1M users 1-2999 (HetRec
directors), Last.fm (artists are the items and their own authors, so the cap never binds), and
`series`: real goodbooks-10k books with synthetic readers who read whole series of one author
(what the author cap costs where same-author lists are right; see `write_series`), generated
into `--work`.
Everything tunable is chosen on a validation split of train (the protocol's rule applied to
train, never test): EASE's lambda (models/ease.py) and the diversity re-ranker's MMR penalty
(pipelines/diversify.py). Then the test table, and the diversity trade-off curve (caps 1, 2, 3,
uncapped) of the ranker's lists on test. BLAS runs on one thread.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from features.columns import ITEM_ID, RANK, USER_ID  # noqa: E402
from features.matrix import build_matrix  # noqa: E402
from features.ranking import HistoryStats, candidate_features, history_stats  # noqa: E402
from models.ease import CatalogueTooLarge, Ease, EaseConfig  # noqa: E402
from pipelines import candidates as cand  # noqa: E402
from pipelines import diversify as div  # noqa: E402
from pipelines import embeddings, neighbours  # noqa: E402
from pipelines import ranking as rk  # noqa: E402
from pipelines.evaluate import (  # noqa: E402
    Metrics,
    Split,
    SplitConfig,
    evaluate_lists,
    popularity_lists,
    split_last,
    top_k_from_scores,
)
from pipelines.ingest import ItemsFile, SourceConfig, ingest, preset_source  # noqa: E402
from pipelines.recommend.config import RunConfig  # noqa: E402
from pipelines.tradeoff import tradeoff_curve, tradeoff_markdown  # noqa: E402

# Measured 2026-12-01, working tree of that morning, defaults (RunConfig()), 1 BLAS thread on a
# shared 2-core machine. Validation NDCG@10 of EASE by lambda (--ease-only, grids 10..20000):
#   ML-1M 1-2999: 100 .0879, 200 .0907, 300 .0920, 500 .0927, 1000 .0930, 3000 .0944 (best),
#                 5000 .0931, 10000 .0912
#   latest-small: 30 .0809, 60 .0822 (best), 100 .0814, 200 .0816, 300 .0813, 500 .0798
#   Last.fm:      30 .1869, 60 .1896 (best), 100 .1889, 200 .1808, 300 .1751, 500 .1672
# Test NDCG@10 (lightgbm -> + diversity at cap 2; EASE with the validation lambda):
#   ML-1M 0.0766 -> 0.0767 (+0.1%), EASE(3000) 0.0985; latest-small 0.0584 -> 0.0593 (+1.6%,
#   penalty 10), EASE(100) 0.0811 [with ranker.sampling.enabled = false: 0.0940 -> 0.0938
#   (-0.2%, penalty 3), EASE(60) 0.0794]; Last.fm 0.1969 -> 0.1969 (artists are the items, the
#   cap never binds), EASE(100) 0.2207.
# Re-run on latest-small at 11:40 (validated defaults, EASE candidates in the ranker):
#   lightgbm 0.1064 -> + diversity 0.1061 (-0.3%, penalty 0) / 0.1063 (-0.1%, penalty 3, the
#   validation choice); EASE(60) 0.0794, ratio 1.34.
# series (goodbooks-10k readers, seed 20261201: 4,000 users, 5,166 items, 74,698 interactions),
# defaults, 2026-12-01: lightgbm 0.3747 -> + diversity 0.3575 (-4.6%, cap 2, penalty 0 chosen on
#   validation); cap 1 -17.3%, cap 3 -1.8%; EASE(100, the grid's low end) 0.3130; 144 s.

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BENCH_MAX_ITEMS = 20_000  # the reference runs on last.fm (17,632 items) too
K = 20  # list length evaluated (NDCG@10 and Recall@20)
EASE_GRID = (100.0, 300.0, 500.0, 1000.0, 3000.0)
PENALTY_GRID = (0.0, 1.0, 3.0, 10.0)  # MMR author penalty, in list positions


def ml1m_source() -> SourceConfig:
    """ML-1M users 1-2999 with titles and HetRec directors."""
    return preset_source(
        "movielens-1m", SHARED / "ml-1m", path="ratings_users0001-2999.dat.gz",
        items=[ItemsFile(path=SHARED / "ml-1m" / "movies.dat", format="dat", header=False,
                         encoding="latin-1", names=["item", "title", "genres"], item="item",
                         title="title"),
               ItemsFile(path=SHARED / "hetrec2011-movielens-2k" / "movie_directors.dat",
                         format="tsv", encoding="latin-1", item="movieID", author="directorID")])


# The `series` data set: goodbooks-10k metadata with synthetic series readers.
GOODBOOKS = SHARED / "goodbooks-10k" / "books.csv"
SERIES_SEED = 20261201
SERIES_USERS = 4_000
SERIES_STANDALONES = 2_000  # the most rated books outside any series
SERIES_CONTINUE = (0.30, 0.50, 0.75, 0.88, 0.93)  # P(read the next of the series | rating 1..5)
_SERIES_TITLE = re.compile(r"\(([^()#]+?),?\s*#(\d+)\)\s*$")  # "(The Hunger Games, #1)"


@dataclass(frozen=True)
class Book:
    """One goodbooks-10k book as the generator uses it."""

    book_id: int
    title: str
    author: str
    ratings_count: int
    average_rating: float


def goodbooks_catalogue(path: Path = GOODBOOKS
                        ) -> tuple[list[list[Book]], list[Book]]:
    """The series (each a list of books by position) and the standalone books of goodbooks-10k.

    A series is (series name, first author) from titles like "Mockingjay (The Hunger Games,
    #3)": only whole-number positions (no "#0.5" novellas, no "#1-3" box sets), one book per
    position (the most rated), at least two positions. Standalones: the `SERIES_STANDALONES`
    most rated books whose title names no series position at all.
    """
    books = pl.read_csv(path, infer_schema_length=0)
    series: dict[tuple[str, str], dict[int, Book]] = {}
    standalone: list[Book] = []
    for bid, title, authors, count, avg in books.select(
            "book_id", "title", "authors", "ratings_count", "average_rating").iter_rows():
        book = Book(int(bid), title, authors.split(",")[0].strip(), int(count), float(avg))
        m = _SERIES_TITLE.search(title)
        if m:
            at = series.setdefault((m.group(1).strip(), book.author), {})
            pos = int(m.group(2))
            if pos not in at or book.ratings_count > at[pos].ratings_count:
                at[pos] = book
        elif "#" not in title:
            standalone.append(book)
    runs = [[at[p] for p in sorted(at)] for _, at in sorted(series.items()) if len(at) >= 2]
    standalone.sort(key=lambda b: (-b.ratings_count, b.book_id))
    return runs, standalone[:SERIES_STANDALONES]


def write_series(work: Path, n_users: int = SERIES_USERS, seed: int = SERIES_SEED
                 ) -> tuple[Path, Path]:
    """Write the `series` data set into `work`: (interactions CSV, items CSV).

    Real (goodbooks-10k books.csv, CC BY-SA 4.0): the books, titles, authors (the first name in
    `authors`), series and positions parsed from the titles (`goodbooks_catalogue`), and each
    book's ratings count and average rating. Synthetic (numpy, seed `seed`, so the files are
    the same on every run): the readers. Each of `n_users` users
    - reads 1 + Poisson(1.5) series (at most 6), drawn by the ratings count of the series' first
      book ** 0.7, and each other series of the same author with probability 0.3 (author
      loyalty);
    - reads each series in order from its first book and goes on to the next with
      `SERIES_CONTINUE[rating - 1]` (0.93 after a 5), so whole series are common;
    - reads 3 + Poisson(6) standalone books, drawn without replacement by ratings count ** 0.8;
    - rates a book round(average rating + user bias N(0, 0.4) + noise N(0, 0.8)), clipped to 1-5;
    - reads in a time line that starts uniformly in 2014-01-01 .. 2017-06-01 with exponential
      gaps (mean 6 days), bingeing: the next book continues the current series with
      probability 0.7, else comes from a random other of the user's open series / standalones.
    The items file has item id (goodbooks `book_id`), title and author columns.
    """
    runs, standalone = goodbooks_catalogue()
    rng = np.random.default_rng(seed)
    by_author: dict[str, list[int]] = {}
    for i, books in enumerate(runs):
        by_author.setdefault(books[0].author, []).append(i)
    w = np.array([books[0].ratings_count for books in runs], dtype=float) ** 0.7
    p_series = w / w.sum()
    w = np.array([b.ratings_count for b in standalone], dtype=float) ** 0.8
    p_standalone = w / w.sum()
    start, end = 1_388_534_400, 1_496_275_200  # 2014-01-01, 2017-06-01 (UTC)
    rows: list[tuple[int, int, int, int]] = []
    for user in range(1, n_users + 1):
        bias = rng.normal(0.0, 0.4)

        def rate(book: Book, bias: float = bias) -> int:
            return int(np.clip(round(book.average_rating + bias + rng.normal(0.0, 0.8)), 1, 5))

        chosen: list[int] = []
        n_series = min(6, 1 + rng.poisson(1.5))
        for s in rng.choice(len(runs), size=n_series, replace=False, p=p_series):
            same = [j for j in by_author[runs[s][0].author] if j != s]
            for i in [int(s)] + [j for j in same if rng.random() < 0.3]:
                if i not in chosen:
                    chosen.append(i)
        streams: list[list[tuple[Book, int]]] = []
        for i in chosen:
            read: list[tuple[Book, int]] = []
            for book in runs[i]:
                read.append((book, rate(book)))
                if rng.random() >= SERIES_CONTINUE[read[-1][1] - 1]:
                    break
            streams.append(read)
        n_alone = min(len(standalone), 3 + rng.poisson(6.0))
        for j in rng.choice(len(standalone), size=n_alone, replace=False, p=p_standalone):
            streams.append([(standalone[j], rate(standalone[j]))])
        t = float(rng.uniform(start, end))
        current = int(rng.integers(len(streams)))
        while streams:
            book, rating = streams[current].pop(0)
            rows.append((user, book.book_id, rating, int(t)))
            t += rng.exponential(6 * 86_400.0)
            if not streams[current]:
                streams.pop(current)
            elif rng.random() < 0.7:
                continue
            if streams:
                current = int(rng.integers(len(streams)))
    work.mkdir(parents=True, exist_ok=True)
    inter, items = work / "series-interactions.csv", work / "series-items.csv"
    u, b, r, ts = zip(*rows, strict=True)
    catalogue = {bk.book_id: bk for books in runs for bk in books} | {
        bk.book_id: bk for bk in standalone}
    used = sorted(set(b))
    for path, frame in (
            (inter, pl.DataFrame({"user": u, "book_id": b, "rating": r, "timestamp": ts})),
            (items, pl.DataFrame({"book_id": used,
                                  "title": [catalogue[i].title for i in used],
                                  "author": [catalogue[i].author for i in used]}))):
        tmp = path.with_suffix(".tmp")
        frame.write_csv(tmp)
        os.replace(tmp, path)
    return inter, items


def series_source(work: Path) -> SourceConfig:
    """The `series` data set, (re)generated into `work`, as a source config."""
    inter, items = write_series(work)
    return SourceConfig(path=inter, format="csv", user="user", item="book_id", weight="rating",
                        timestamp="timestamp",
                        items=[ItemsFile(path=items, format="csv", item="book_id",
                                         title="title", author="author")])


def datasets(work: Path) -> dict[str, tuple[str, Callable[[], SourceConfig]]]:
    """Data set key -> (title, source config maker); generated sets are written to `work`."""
    return {
        "embedded": ("embedded MovieLens latest-small (directors)", SourceConfig),
        "ml1m": ("ML-1M users 1-2999 (directors)", ml1m_source),
        "lastfm": ("Last.fm (artists as authors)",
                   lambda: preset_source("lastfm", SHARED / "hetrec2011-lastfm-2k")),
        "series": ("goodbooks-10k series readers (synthetic; authors of the books)",
                   lambda: series_source(work)),
    }


def ease_lists(train: pa.Table, users: Sequence[str], config: EaseConfig, k: int = K
               ) -> pa.Table:
    """EASE top-k lists (user_id, item_id, rank) for `users`, excluding their train items."""
    m = build_matrix(train)
    model = Ease(config).fit(m.weights)
    rows = m.users.index(pa.array(list(users), pa.string()))
    items, _ = model.recommend(m.weights[rows], k)  # (users, k), -1 = no item left
    r, c = np.nonzero(items >= 0)
    return pa.table({
        USER_ID: pa.array(np.asarray(users, dtype=object)[r].tolist(), pa.string()),
        ITEM_ID: m.items.take(items[r, c]),
        RANK: pa.array(c + 1, pa.int32()),
    })


def choose_ease_reg(inner: Split, items: pa.Table, grid: Sequence[float]) -> float:
    """The lambda with the best validation NDCG@10 (ties: the smaller lambda)."""
    users = sorted(set(inner.test.column(USER_ID).to_pylist()))
    n_items = pc.count_distinct(inner.train.column(ITEM_ID)).as_py()
    best = (-1.0, 0.0)
    for reg in grid:
        t = time.perf_counter()
        ease = EaseConfig(reg=reg, max_items=BENCH_MAX_ITEMS)
        m = evaluate_lists(ease_lists(inner.train, users, ease), inner.test, items, n_items)
        print(f"  EASE lambda={reg:g}: validation NDCG@10 {m.ndcg_at_10:.4f} "
              f"Recall@20 {m.recall_at_20:.4f} ({time.perf_counter() - t:.1f} s)", flush=True)
        if m.ndcg_at_10 > best[0]:
            best = (m.ndcg_at_10, reg)
    return best[1]


@dataclass(frozen=True)
class Sources:
    """One history's candidate sources, candidates and feature statistics."""

    history: pa.Table
    candidates: pa.Table
    stats: HistoryStats


def sources_for(history: pa.Table, items: pa.Table, cfg: RunConfig) -> Sources:
    """Neighbourhoods, ALS, the candidates and feature statistics of one history.

    Mirrors the nightly job's per-history stages (pipelines/recommend/stages.py) in memory.
    """
    un = neighbours.user_neighbours(history, cfg.user_neighbours)
    inb = neighbours.item_neighbours(history, cfg.item_neighbours)
    uf, itf = embeddings.als_factors(history, cfg.als)
    candidates = cand.generate(history, items, un, inb, uf, itf, cfg.candidates, ease=cfg.ease)
    stats = history_stats(history, items, uf, itf,
                          recent_days=cfg.candidates.popular_window_days)
    return Sources(history, candidates, stats)


def features_of(s: Sources) -> pl.DataFrame:
    """Feature rows of a history's candidates, sorted by (user, item)."""
    return candidate_features(s.candidates, s.history, s.stats).sort([USER_ID, ITEM_ID])


def ranker_scored(train: pa.Table, items: pa.Table, cfg: RunConfig
                  ) -> tuple[Sources, pa.Table, str]:
    """Candidates from `train` and their ranker scores (fusion when too little data).

    The ranker trains on `ranker.label_cutoffs` successive splits of `train` (labels from each
    cut-off's held-out part, candidates and features from the rest), as the nightly job does.
    """
    s = sources_for(train, items, cfg)
    if cfg.ranking == "lightgbm":
        frames, history = [], train
        for cutoff in range(cfg.ranker.label_cutoffs):
            split = split_last(history, cfg.ranker.label_split)
            if split.test.num_rows == 0:
                break
            sc = sources_for(split.train, items, cfg)
            frame = rk.label(features_of(sc), split.test)
            users = pl.Series(split.test[USER_ID].unique().to_pylist(), dtype=pl.String)
            frame = rk.sample_rows(frame.filter(pl.col(USER_ID).is_in(users.implode())),
                                   cfg.ranker.sampling, cfg.ranker.model.seed)
            frames.append(frame.with_columns(pl.lit(cutoff, pl.Int8).alias(rk.CUTOFF)))
            history = split.train
        try:
            if not frames:
                raise rk.TooLittleData("no user has enough interactions for a target")
            model = rk.fit_on(frames, cfg.ranker)
        except rk.TooLittleData as exc:
            print(f"  ranker skipped ({exc}); fusion orders the candidates")
        else:
            return s, rk.score(model, features_of(s), s.candidates), "lightgbm"
    return s, div.fuse(s.candidates, cfg.fusion), "fusion"


def source_lists(candidates: pa.Table, source: str, k: int = K) -> pa.Table:
    """One candidate source's own top-k, read from its rank column."""
    sub = candidates.filter(pc.is_valid(candidates.column(f"{source}_rank")))
    score = pc.negate(pc.cast(sub.column(f"{source}_rank"), pa.float64()))
    return top_k_from_scores(sub.select([USER_ID, ITEM_ID]).append_column("score", score), k)


def row(name: str, m: Metrics) -> str:
    """One markdown row of the comparison table."""
    return (f"| {name} | {m.ndcg_at_10:.4f} | {m.recall_at_20:.4f} | {m.coverage_at_10:.3f} | "
            f"{m.distinct_authors_at_10:.2f} | {m.max_per_author_at_10:.2f} / "
            f"{m.worst_max_per_author_at_10} |")


def run(key: str, cfg: RunConfig, ease_grid: Sequence[float], work: Path,
        ease_only: bool = False) -> None:
    """Validate, then evaluate one data set and print its tables."""
    title, source = datasets(work)[key]
    print(f"\n## {title}", flush=True)
    start = time.perf_counter()
    data = ingest(source())
    split_cfg = SplitConfig()
    split = split_last(data.interactions, split_cfg)
    inner = split_last(split.train, split_cfg)
    n_val = pc.count_distinct(inner.train.column(ITEM_ID)).as_py()
    n_test = pc.count_distinct(split.train.column(ITEM_ID)).as_py()
    n_users = pc.count_distinct(data.interactions.column(USER_ID)).as_py()
    print(f"{data.interactions.num_rows:,} interactions, {n_users:,} users, "
          f"{data.items.num_rows:,} items, {n_test:,} train items; split "
          f"{'by time' if split.temporal else 'random (no time stamps)'}", flush=True)

    # Validation: EASE lambda, then the MMR penalty of the re-ranker at the configured cap.
    print("### validation (a split of train)")
    reg: float | None = None
    if Ease(EaseConfig(max_items=BENCH_MAX_ITEMS)).allows(n_val):
        reg = choose_ease_reg(inner, data.items, ease_grid)
    else:
        print(f"  EASE skipped: {n_val:,} items > max_items {BENCH_MAX_ITEMS:,}")
    if ease_only:
        return
    t = time.perf_counter()
    _, scored_val, ranker = ranker_scored(inner.train, data.items, cfg)
    print(f"  {ranker} on validation: {time.perf_counter() - t:.0f} s", flush=True)
    val = tradeoff_curve(scored_val, inner.test, data.items, n_val, cfg.diversify,
                         penalties=PENALTY_GRID)
    print(tradeoff_markdown(val, f"validation trade-off ({ranker})"))
    at_cap = [r for r in val.to_pylist() if r["max_per_author"] == cfg.diversify.max_per_author]
    penalty = max(at_cap, key=lambda r: (r["ndcg_at_10"], -r["author_penalty"]))[
        "author_penalty"]
    print(f"  chosen MMR penalty at cap {cfg.diversify.max_per_author}: {penalty:g}")

    # Test: the product's models, EASE with the chosen lambda, and the trade-off curve.
    print("### test")
    users = sorted(set(split.test.column(USER_ID).to_pylist()))
    metrics: list[tuple[str, Metrics]] = []

    def add(name: str, lists: pa.Table) -> None:
        metrics.append((name, evaluate_lists(lists, split.test, data.items, n_test)))

    add("popularity", popularity_lists(split.train, users, K))
    t = time.perf_counter()
    cs, scored, ranker = ranker_scored(split.train, data.items, cfg)
    t_rank = time.perf_counter() - t
    for s in ("user_pearson", "item_pearson", "als"):
        add(s, source_lists(cs.candidates, s))
    add("fusion (RRF)", top_k_from_scores(div.fuse(cs.candidates, cfg.fusion), K))
    add(ranker, top_k_from_scores(scored, K))
    chosen = cfg.diversify.model_copy(update={"n": max(K, cfg.diversify.n),
                                              "author_penalty": penalty})
    diverse_name = (f"{ranker} + diversity (<= {chosen.max_per_author} per author, "
                    f"penalty {penalty:g})")
    add(diverse_name, div.diversify(scored, data.items, chosen).select([USER_ID, ITEM_ID, RANK]))
    t_ease, ease_name = 0.0, ""
    if reg is not None:
        t = time.perf_counter()
        try:
            ease = ease_lists(split.train, users, EaseConfig(reg=reg, max_items=BENCH_MAX_ITEMS))
        except CatalogueTooLarge as exc:
            print(f"  EASE skipped: {exc}")
        else:
            t_ease = time.perf_counter() - t
            ease_name = f"EASE (lambda {reg:g}, chosen on validation)"
            add(ease_name, ease)
    print("| model | NDCG@10 | Recall@20 | coverage@10 | distinct authors@10 | "
          "max/author@10 (mean / worst list) |")
    print("|---|---|---|---|---|---|")
    for name, m in metrics:
        print(row(name, m))
    by = dict(metrics)
    best = by[ranker].ndcg_at_10
    diverse = by[diverse_name].ndcg_at_10
    print(f"\n{ranker} {best:.4f}; + diversity {diverse:.4f} "
          f"({100 * (diverse / best - 1):+.1f}%)", end="")
    if ease_name:
        e = by[ease_name].ndcg_at_10
        print(f"; EASE {e:.4f}: {ranker} + diversity / EASE = {diverse / e:.3f}", end="")
    print(f"\nseconds: candidates + ranker {t_rank:.0f}, EASE fit + lists {t_ease:.0f}\n")
    test_curve = tradeoff_curve(scored, split.test, data.items, n_test, cfg.diversify,
                                penalties=sorted({0.0, penalty}))
    print(tradeoff_markdown(test_curve, f"test trade-off ({ranker})"))
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["all"],
                        choices=["embedded", "ml1m", "lastfm", "series", "all"])
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--ease-grid", type=float, nargs="+", default=list(EASE_GRID))
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "recsys-quality",
                        help="folder the generated data sets (series) are written to")
    parser.add_argument("--ease-only", action="store_true",
                        help="only choose EASE's lambda on validation (no ranker, no test)")
    args = parser.parse_args()
    cfg = RunConfig.from_toml(args.config) if args.config else RunConfig()
    keys = list(datasets(args.work)) if "all" in args.dataset else args.dataset
    with threadpool_limits(1, "blas"):
        for key in keys:
            run(key, cfg, args.ease_grid, args.work, args.ease_only)


if __name__ == "__main__":
    main()
