"""The Dask engine adapter: shard work on a `distributed` cluster, parts written by the workers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from features.errors import ConfigError
from pipelines.recommend.engine import ShardFn

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
    """A `distributed.Client` on a new LocalCluster of worker processes."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                           processes=True, dashboard_address=None)
    return Client(cluster)


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


class DaskEngine:
    """Runs each shard as a Dask task; the shared inputs are broadcast to every worker once.

    Workers write their parts straight into the run's staging folder, so every worker must
    see the output root (a shared file system). A worker that dies fails the stage: the run
    is not published and the rerun reuses every finished stage from the cache.
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
        [data] = self.client.scatter([shared], broadcast=True, hash=False)
        futures = self.client.map(fn, [data] * len(paths), list(range(len(paths))),
                                  list(paths), pure=False)
        rows = [int(r) for r in self.client.gather(futures)]
        del data
        return rows

    def run_whole(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) as one task on a worker (a stage without shard work); waits for it."""
        return self.client.submit(fn, *args, pure=False).result()

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

        params, (xt, yt, gt), (xv, yv, gv) = ranker.prepare(x, y, groups, features)
        n_parts = max(1, min(len(self.client.scheduler_info()["workers"]), len(gt)))

        def by_query(x_: Any, y_: Any, g_: Any, parts: int) -> tuple[Any, Any, Any]:
            cut = np.array_split(np.arange(len(g_)), parts)  # queries per partition
            rows = tuple(int(g_[c].sum()) for c in cut)
            return (da.from_array(x_, chunks=(rows, x_.shape[1])),
                    da.from_array(y_, chunks=(rows,)),
                    da.from_array(g_, chunks=(tuple(len(c) for c in cut),)))

        dx, dy, dg = by_query(xt, yt, gt, n_parts)
        # Every worker gets a share of the validation queries: the model comes back from one
        # worker, and one without validation data would return no curve to stop on.
        vx, vy, vg = by_query(xv, yv, gv, max(1, min(n_parts, len(gv))))
        params = {k: v for k, v in params.items() if k not in ("metric", "verbose")}
        model = DaskLGBMRanker(client=self.client, n_estimators=ranker.config.epochs,
                               verbose=-1, **params)
        model.fit(dx, dy, group=dg, eval_set=[(vx, vy)], eval_group=[vg],
                  eval_at=[ranker.config.eval_at], eval_metric="ndcg")
        local = model.to_local()
        curves = getattr(model, "evals_result_", None) or getattr(local, "evals_result_", {})
        scores = [v for curve in curves.values() for v in curve.values()][:1]
        if not scores or not len(scores[0]):
            raise RuntimeError("the distributed ranker returned no validation curve to stop on")
        best = early_stopping_iteration(scores[0], ranker.config.early_stopping)
        log.info("distributed ranker: %d rows in %d partitions, best iteration %d",
                 len(yt), n_parts, best)
        return ranker.set_booster(local.booster_, best)


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
