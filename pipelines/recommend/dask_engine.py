"""The Dask engine adapter: shard work on a `distributed` cluster, parts written by the workers."""

from __future__ import annotations

import logging
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from features.errors import ConfigError
from pipelines.recommend.engine import MALLOC_ARENAS, ShardFn

log = logging.getLogger(__name__)


class EngineConfig(BaseModel):
    """Where the nightly job runs: in this process, as Prefect tasks, or on a Dask cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field("prefect", pattern="^(local|prefect|dask)$")
    """`local` (one process, no Prefect), `prefect` (Prefect tasks, shards in-process) or
    `dask` (Prefect tasks; shard work on a Dask cluster)."""
    address: str | None = None
    """An existing scheduler, e.g. tcp://host:8786 (started with `dask scheduler` /
    `dask worker`, dask-kubernetes or dask-jobqueue). None starts a LocalCluster for the run."""
    n_workers: int = Field(2, ge=1)
    """Workers of the LocalCluster the run starts (ignored with `address`)."""
    threads_per_worker: int = Field(1, ge=1)
    """Threads per LocalCluster worker (ignored with `address`)."""
    concurrent_stages: int = Field(3, ge=1)
    """Independent stages run side by side (their tasks share the workers)."""


def local_client(n_workers: int, threads_per_worker: int) -> Any:
    """A `distributed.Client` on a new LocalCluster of worker processes.

    Each worker's own thread pools are sized to its threads: Dask's nanny already sets the
    BLAS/OpenMP ones (and Arrow reads OMP_NUM_THREADS), polars would otherwise start one
    thread per core in every worker and the workers would compete for the cores.
    """
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                           processes=True, dashboard_address=None,
                           env=worker_environment(threads_per_worker))
    return Client(cluster)


def worker_environment(threads: int) -> dict[str, str]:
    """Environment for a worker process with `threads` task threads (set before it starts).

    glibc's malloc arenas are capped as in a local night (`engine.MALLOC_ARENAS`, or one per
    task thread where a worker has more), where each extra arena kept its own share of freed
    memory.
    """
    return {"POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
            "MALLOC_ARENA_MAX": str(max(threads, MALLOC_ARENAS))}


def connect(config: EngineConfig) -> Any:
    """A client for the configured cluster; a clear error when the scheduler is unreachable."""
    from distributed import Client

    if config.address is None:
        return local_client(config.n_workers, config.threads_per_worker)
    try:
        return Client(config.address, timeout="20s")
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {config.address} ({exc}); start one with "
            "`dask scheduler` and `dask worker <address>`, or remove engine.address to use a "
            "local cluster") from exc


_DISTRIBUTED_FIT = threading.Lock()
"""One distributed LightGBM fit at a time per driver: two interleaved fits could each hold a
worker that the other's network waits on (one thread per worker), and both would hang."""


class ClusterShards:
    """Runs each shard as a Dask task; the shared inputs are broadcast to every worker once.

    Workers write their parts straight into the run's staging folder, so every worker must
    see the output root (a shared file system). A worker that dies fails the stage: the run
    is not published and the rerun reuses every finished stage from the cache. Used from the
    driver, or from inside a stage's task on a worker (see `DaskEngine.run_whole`).
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def parallelism(self) -> int:
        """Workers in the cluster (the Pearson scan is split into this many parts)."""
        return max(1, len(self.client.scheduler_info()["workers"]))

    def map_shards(self, fn: ShardFn, shared: Any, paths: Sequence[Path]) -> list[int]:
        """One task per shard, in order."""
        if not paths:
            return []
        # A fresh key per stage: a fixed key could still name the previous stage's data on a
        # worker while its release is in flight, and the shard would get the wrong inputs.
        # From a task, scatter keeps the data in this worker's memory and copies it to the
        # others worker to worker: the driver never holds or forwards it.
        [data] = self.client.scatter([shared], broadcast=True, hash=False)
        futures = self.client.map(fn, [data] * len(paths), list(range(len(paths))),
                                  list(paths), pure=False)
        with _seceded():
            rows = [int(r) for r in self.client.gather(futures)]
        del data
        return rows

    def fit_ranker(self, ranker: Any, x: Any, y: Any, groups: Any, features: list[str]) -> Any:
        """Train a LambdaRanker with `lightgbm.dask.DaskLGBMRanker`, partitioned by query.

        Rows are cut into one partition per worker at query boundaries, so no query is split.
        LightGBM's Dask interface has no early stopping, so every round is trained and the
        validation curve is replayed through the same rule (`early_stopping_iteration`): the
        model keeps the iteration the in-process fit would have stopped at.
        """
        with _DISTRIBUTED_FIT:
            return self._fit_ranker(ranker, x, y, groups, features)

    def _fit_ranker(self, ranker: Any, x: Any, y: Any, groups: Any, features: list[str]
                    ) -> Any:
        import dask.array as da
        import numpy as np
        from lightgbm.dask import DaskLGBMRanker

        params, (xt, yt, gt), (xv, yv, gv), bins = ranker.prepare(x, y, groups, features)
        # The uint8 codes as float32, the dtype lightgbm.dask's partitions expect.
        xt, xv = xt.astype(np.float32), xv.astype(np.float32)
        n_parts = max(1, min(len(self.client.scheduler_info()["workers"]), len(gt)))

        def by_query(x_: Any, y_: Any, g_: Any, parts: int) -> tuple[Any, Any, Any]:
            cut = np.array_split(np.arange(len(g_)), parts)  # queries per partition
            rows = tuple(int(g_[c].sum()) for c in cut)
            return (da.from_array(x_, chunks=(rows, x_.shape[1])),
                    da.from_array(y_, chunks=(rows,)),
                    da.from_array(g_, chunks=(tuple(len(c) for c in cut),)))

        def copies(a: Any) -> Any:  # one whole copy per training partition
            whole = da.from_array(a, chunks=a.shape)
            return da.concatenate([whole] * n_parts)

        dx, dy, dg = by_query(xt, yt, gt, n_parts)
        # LightGBM computes the validation metric on each worker's own eval rows (it does not
        # sum it over the network), and the model comes back from one worker: each training
        # partition gets the whole validation set, so every worker's curve is the one the
        # in-process fit sees (a worker with several copies averages the same queries).
        vx, vy, vg = copies(xv), copies(yv), copies(gv)
        # The same forced bins file on every worker (the codes' boundaries, `FeatureBins`).
        forced = Path(tempfile.gettempdir()) / f"recsys-forced-bins-{uuid.uuid4().hex}.json"
        self.client.run(_write_text, str(forced), bins.forced_bins())
        params = {k: v for k, v in {**params, **bins.params(forced)}.items()
                  if k not in ("metric", "verbose")}
        try:
            model = DaskLGBMRanker(client=self.client, n_estimators=ranker.config.epochs,
                                   verbose=-1, **params)
            model.fit(dx, dy, group=dg, eval_set=[(vx, vy)], eval_group=[vg],
                      eval_at=[ranker.config.eval_at], eval_metric="ndcg")
        finally:
            self.client.run(_remove, str(forced))
        local = model.to_local()
        curves = getattr(model, "evals_result_", None) or getattr(local, "evals_result_", {})
        scores = [v for curve in curves.values() for v in curve.values()][:1]
        if not scores or not len(scores[0]):
            raise RuntimeError("the distributed ranker returned no validation curve to stop on")
        best = early_stopping_iteration(scores[0], ranker.config.early_stopping)
        log.info("distributed ranker: %d rows in %d partitions, best iteration %d",
                 len(yt), n_parts, best)
        return ranker.set_booster(bins.raw_booster(local.booster_), best)


class DaskEngine(ClusterShards):
    """The driver's engine: shard stages on the cluster, and whole stages on one worker."""

    def run_whole(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args, engine=<the cluster, seen from the worker>) as one task; waits for it.

        A stage that fans out shards does it from its task through the worker's own client,
        so its shared context is built, and broadcast, on the cluster instead of the driver.
        """
        return self.client.submit(_on_a_worker, fn, *args, pure=False).result()


def _on_a_worker(fn: Callable[..., Any], *args: Any) -> Any:
    from distributed import get_client

    return fn(*args, engine=ClusterShards(get_client()))


@contextmanager
def _seceded() -> Iterator[None]:
    """Within a task: leave the worker's thread pool while waiting on other tasks.

    The stage's task then holds no thread while its shards run (one thread per worker would
    otherwise deadlock), and rejoins, waiting for a free thread, to finish its own work.
    """
    from distributed import get_worker, rejoin, secede

    try:
        get_worker()
    except ValueError:  # on the driver
        yield
        return
    secede()
    try:
        yield
    finally:
        rejoin()


def _write_text(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def early_stopping_iteration(curve: Sequence[float], patience: int) -> int:
    """The 1-based iteration LightGBM's early stopping keeps for a higher-is-better curve.

    Stops once `patience` rounds pass without a strict improvement, and keeps the first best.
    """
    best, best_at = float("-inf"), 0
    for i, score in enumerate(curve):
        if score > best:
            best, best_at = score, i
        elif i - best_at >= patience:
            break
    return best_at + 1
