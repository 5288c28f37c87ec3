"""Benchmark: the compiled neighbour kernel vs scikit-surprise's `pearson` on ML-1M users 1-2999.

Run: `python bench/neighbours.py [--ratings PATH] [--repeats 3]`, with scikit-surprise installed
(`pip install scikit-surprise`; without it only our timings are printed). In one run it prints:
- compile cost: the first call in a fresh process with an empty numba cache, then with the
  cache that run left (the second process of a deployment), then a warm call;
- per side (users, items): our top-50 on 1 and 2 threads (wall and CPU seconds, best and
  median of the repeats), every pair on 1 thread, Surprise's similarity matrix (same
  min_support), the speed ratios, and the largest |difference| where both are defined;
- the dense co-rating stress case (20,000 users x the same 5 items, and with 2 random extra
  items each), each in its own process: seconds and peak RSS of `user_neighbours`, k = 50.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from models.neighbours import PearsonConfig, pearson_blocks  # noqa: E402

DEFAULT = REPO.parent / "shared" / "data" / "ml-1m" / "ratings_users0001-2999.dat.gz"


def load_ratings(path: Path) -> sp.csr_matrix:
    """MovieLens `user::item::rating::ts` lines as a users x items CSR of the ratings."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as f:
        rows = np.array([line.split("::")[:3] for line in f], dtype=np.int64)
    users = np.unique(rows[:, 0], return_inverse=True)[1]
    items = np.unique(rows[:, 1], return_inverse=True)[1]
    mat = sp.csr_matrix((rows[:, 2].astype(np.float64), (users, items)))
    mat.sum_duplicates()
    return mat


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, list[float], list[float]]:
    """(last result, wall seconds per repeat, CPU seconds of this process per repeat)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return out, walls, cpus


def spread(xs: list[float]) -> str:
    return f"best {min(xs):6.3f} s, median {float(np.median(xs)):6.3f} s"


def surprise_sim(ratings: sp.csr_matrix, min_support: int) -> np.ndarray:
    """scikit-surprise's pearson between the rows of `ratings` (rows play its 'users')."""
    from surprise.similarities import pearson

    by_col = ratings.tocsc()
    yr = {j: list(zip(by_col.indices[by_col.indptr[j]:by_col.indptr[j + 1]].tolist(),
                      by_col.data[by_col.indptr[j]:by_col.indptr[j + 1]].tolist(),
                      strict=True))
          for j in range(by_col.shape[1])}
    return pearson(ratings.shape[0], yr, min_support)  # (n_rows, n_rows), 0 = undefined


def compare(name: str, ratings: sp.csr_matrix, min_support: int, repeats: int) -> None:
    """Time ours (1 and 2 threads) and Surprise on one side and check agreement."""
    n = ratings.shape[0]
    print(f"\n== {name}: {n} rows, {ratings.nnz} ratings, min_support={min_support}")
    times: dict[str, list[float]] = {}
    for threads in (1, 2):
        cfg = PearsonConfig(k=50, min_support=min_support, threads=threads)
        pearson_blocks(ratings, cfg)  # warm (compiled or loaded from the cache)
        nb, wall, cpu = timed(lambda cfg=cfg: pearson_blocks(ratings, cfg), repeats)
        times[f"top50 t{threads}"] = wall
        print(f"ours top-50, threads={threads}: wall {spread(wall)}; CPU {spread(cpu)}; "
              f"{len(nb.row):,} neighbours")
    cfg = PearsonConfig(k=n - 1, threshold=-1.0, min_support=min_support)
    nb, wall, cpu = timed(lambda: pearson_blocks(ratings, cfg))
    print(f"ours every pair, threads=1: wall {wall[0]:6.3f} s, CPU {cpu[0]:6.3f} s; "
          f"{len(nb.row):,} pairs")
    full = np.full((n, n), np.nan)
    full[nb.row, nb.neighbour] = nb.weight
    try:
        sim, wall_s, cpu_s = timed(lambda: surprise_sim(ratings, min_support))
    except ImportError:
        print("scikit-surprise is not installed: no reference timing")
        return
    print(f"scikit-surprise pearson: wall {wall_s[0]:6.3f} s, CPU {cpu_s[0]:6.3f} s")
    for key, wall in times.items():
        print(f"speed ratio surprise / ours ({key}): wall {wall_s[0] / min(wall):5.1f}x best, "
              f"{wall_s[0] / float(np.median(wall)):5.1f}x median")
    np.fill_diagonal(sim, np.nan)
    both = ~np.isnan(full) & (sim != 0) & ~np.isnan(sim)
    diff = np.abs(full - sim)[both]
    print(f"max |ours - surprise| on {both.sum():,} pairs defined in both: {diff.max():.2e}")
    only_surprise = (np.isnan(full) & (sim != 0) & ~np.isnan(sim))
    print(f"pairs surprise defines and ours not: {only_surprise.sum():,} (of which w = -1 "
          f"exactly, dropped by threshold -1: {(sim[only_surprise] <= -1 + 1e-12).sum():,}); "
          f"ours defines with surprise 0: {(~np.isnan(full) & (sim == 0)).sum():,} "
          "(weight 0 exactly is surprise's 'undefined' too)")


def stress_interactions(extra: int, users: int = 20_000, seed: int = 0) -> Any:
    """20,000 users who all rated items 0-4 (ratings 1-5), plus `extra` random others each."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), 5 + extra)
    item = np.tile(np.arange(5 + extra), users)
    if extra:  # extra items per user from 1,000 others (distinct for extra <= 2)
        others = np.empty((users, extra), dtype=np.int64)
        others[:, 0] = rng.integers(0, 1000, users)
        for e in range(1, extra):
            others[:, e] = (others[:, e - 1] + 1 + rng.integers(0, 1000 - e, users)) % 1000
        item = item.reshape(users, 5 + extra)
        item[:, 5:] = others + 5
        item = item.ravel()
    weight = rng.integers(1, 6, size=len(user)).astype(np.float64)
    return pa.table({"user_id": pa.array(user.astype(str)), "item_id": pa.array(item.astype(str)),
                     "weight": pa.array(weight)})


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    VmHWM, not getrusage's ru_maxrss: on Linux a forked child's ru_maxrss starts at the
    parent's peak, so a bench that already held Surprise's n x n matrices would report
    those for every stress process.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stress_case(extra: int, threads: int) -> None:
    """One stress run in this process: prints JSON (seconds, peak RSS before and after)."""
    table = stress_interactions(extra)
    cfg = PearsonConfig(k=50, min_support=5, threads=threads)
    try:
        from pipelines.neighbours import user_neighbours

        def run_on(t: Any) -> Any:
            return user_neighbours(t, cfg)
        what = "pipelines.neighbours.user_neighbours"
    except ImportError:  # the stage module moved: time the kernel on the same matrix
        from features.matrix import build_matrix

        def run_on(t: Any) -> Any:
            return pearson_blocks(build_matrix(t).weights, cfg)
        what = "build_matrix + pearson_blocks"
    run_on(stress_interactions(extra, users=50))  # compile or load the kernel first
    before = peak_rss_mib()
    out, wall, cpu = timed(lambda: run_on(table))
    peak = peak_rss_mib()
    rows = out.num_rows if hasattr(out, "num_rows") else len(out.row)
    print(json.dumps({"extra": extra, "threads": threads, "called": what, "wall_s": wall[0],
                      "cpu_s": cpu[0], "peak_rss_mib": peak, "rss_before_mib": before,
                      "rows": rows}))


def run_stress() -> None:
    print("\n== dense co-rating stress: 20,000 users x the same 5 items, k = 50, "
          "min_support = 5 (each in a fresh process; peak RSS of the whole process)")
    for extra in (0, 2):
        for threads in (1, 2):
            out = subprocess.run([sys.executable, __file__, "--stress-case", str(extra),
                                  "--threads", str(threads)], capture_output=True, text=True,
                                 check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"+{extra} random items, threads={threads}: wall {got['wall_s']:6.2f} s, "
                  f"CPU {got['cpu_s']:6.2f} s, peak RSS {got['peak_rss_mib']:6.0f} MiB "
                  f"(process before the call {got['rss_before_mib']:.0f} MiB), "
                  f"{got['rows']:,} rows via {got['called']}")


FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np, scipy.sparse as sp
from models.neighbours import PearsonConfig, pearson_blocks
imported = time.perf_counter()
m = sp.random(200, 50, density=0.2, random_state=0, format="csr")
m.data = np.round(m.data * 4) + 1
# 2,000 rows that all rated the same 5 columns: the dense sweep and its probe.
dense = sp.csr_matrix(np.random.default_rng(0).integers(1, 6, size=(2000, 5)).astype(float))
out = {"import_s": imported - start}
for name, mat in (("sparse", m), ("dense", dense)):
    for threads in (1, 2):
        t = time.perf_counter()
        pearson_blocks(mat, PearsonConfig(k=10, threads=threads))
        out[f"{name}_first_call_t{threads}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pearson_blocks(mat, PearsonConfig(k=10, threads=threads))
        out[f"{name}_warm_call_t{threads}_s"] = time.perf_counter() - t
print({key: round(value, 3) for key, value in out.items()})
"""


def run_compile_cost() -> None:
    print("\n== compile cost (fresh processes; a sparse 200 x 50 matrix, then a dense 2,000 x 5 "
          "one)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("empty numba cache", "cache from the process before"):
            out = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True,
                                 text=True, env=env, cwd=REPO)
            if out.returncode:
                raise RuntimeError(out.stderr)
            print(f"{label}: {out.stdout.strip()}")


def main() -> None:
    """Compile cost, both sides against Surprise, then the stress case."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=Path, default=DEFAULT)
    parser.add_argument("--min-support", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["compile", "ml", "stress"])
    parser.add_argument("--stress-case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stress_case is not None:
        stress_case(args.stress_case, args.threads)
        return
    print(f"load average at start: {os.getloadavg()}, cores: {os.cpu_count()}")
    if "compile" not in args.skip:
        run_compile_cost()
    if "ml" not in args.skip:
        ratings = load_ratings(args.ratings)
        compare("users", ratings, args.min_support, args.repeats)
        compare("items", ratings.T.tocsr(), args.min_support, args.repeats)
    if "stress" not in args.skip:
        run_stress()
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
