"""LambdaRanker: LightGBM learning-to-rank (lambdarank), one query group per user."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from features.errors import NotFittedError


class RankerConfig(BaseModel):
    """LightGBM lambdarank settings (defaults chosen on a validation split of ML-1M train)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(0.1, gt=0)
    """Shrinkage per boosting round. 0.1 with early_stopping 30 matched 0.05 with 100 on the
    validation splits (ML-1M train NDCG@10 0.1199 vs 0.1188, embedded 0.0884 vs 0.0885) in
    about a third of the rounds."""
    num_leaves: int = Field(15, ge=2)
    """Leaves per tree."""
    min_data_in_leaf: int = Field(100, ge=1)
    """Least rows per leaf."""
    feature_fraction: float = Field(0.7, gt=0, le=1)
    """Share of features sampled per tree."""
    epochs: int = Field(500, ge=1)
    """Most boosting rounds; early stopping usually ends sooner."""
    early_stopping: int = Field(30, ge=1)
    """Stop when validation NDCG@10 has not improved for this many rounds."""
    eval_at: int = Field(10, ge=1)
    """k of the NDCG@k that lambdarank optimises and early stopping watches."""
    valid_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of users held out for early stopping."""
    seed: int = 0
    """Seed of LightGBM and of the validation users."""
    threads: int = Field(1, ge=1)
    """LightGBM threads (1 is fastest on a busy 2-core machine)."""


MAX_BIN = 255
"""LightGBM's bins per feature: the missing-value bin, one empty bin below the codes, and up to
253 value bins."""
LOWEST = float(np.finfo(np.float64).min)
NAN_LEFT = 2 | (2 << 2)
"""LightGBM decision_type of a numerical split whose missing values (NaN) go left."""


@dataclass(frozen=True)
class FeatureBins:
    """Bin edges per feature, fixed from the training rows before LightGBM sees them.

    LightGBM finds each feature's bins on a sample of one machine's own rows, so a distributed
    fit bins differently from one process, and differently again when the partitions move.
    Here each value is replaced by its bin's code before training (missing: 0; values: 1 for
    x <= edges[0], c + 1 for edges[c - 1] < x <= edges[c]), and LightGBM gets the code
    boundaries c + 0.5 as forced bins: every machine, and one process, bins identically.
    After training the model is translated back to raw feature values (`raw_model`), so
    prediction needs no codes.
    """

    edges: tuple[np.ndarray, ...]  # per feature, increasing float64 upper bounds

    @classmethod
    def fit(cls, x: np.ndarray, sample: int = 200_000, seed: int = 0,
            subset: np.ndarray | None = None) -> FeatureBins:
        """Edges from (a seeded sample of) rows x (n, f), or of the rows x[subset].

        A feature with few distinct values gets a bin for each, others equal-frequency bins.
        """
        index = np.arange(len(x)) if subset is None else subset
        if len(index) > sample:
            index = index[np.sort(np.random.default_rng(seed).choice(len(index), sample,
                                                                     replace=False))]
        rows = x if subset is None and len(x) <= sample else x[index]
        most = MAX_BIN - 2
        edges = []
        for j in range(x.shape[1]):
            v = rows[:, j].astype(np.float64)
            v = v[~np.isnan(v)]
            d = np.unique(v)
            if len(d) - 1 <= most:  # midpoints between neighbouring distinct values
                e = (d[:-1] + d[1:]) / 2
            else:  # equal-frequency edges at sample values (ties merge)
                e = np.unique(np.quantile(v, np.linspace(0, 1, most + 2)[1:-1],
                                          method="lower"))
            edges.append(e)
        return cls(tuple(edges))

    def codes(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows x (n, f), or x[rows], as uint8 bin codes (missing values 0).

        A code is at most MAX_BIN - 1; computed column by column, so x is never copied whole.
        """
        rows = np.arange(len(x)) if rows is None else rows
        out = np.empty((len(rows), x.shape[1]), np.uint8)
        for j, e in enumerate(self.edges):
            col = x[rows, j]
            code = np.searchsorted(e, col, side="left") + 1
            code[np.isnan(col)] = 0
            out[:, j] = code
        return out

    def forced_bins(self) -> str:
        """LightGBM's `forcedbins_filename` contents: the code boundaries, for every feature.

        Every feature gets all MAX_BIN - 2 boundaries (those above its last code stay empty):
        LightGBM 4's distributed bin finding reads feature i's forced bins for the i-th
        feature a machine owns, not for feature i, so only a list shared by all is safe.
        """
        bounds = [c + 0.5 for c in range(1, MAX_BIN - 1)]
        return json.dumps([{"feature": j, "bin_upper_bound": bounds}
                           for j in range(len(self.edges))])

    def params(self, forced_bins_path: Path | str) -> dict[str, Any]:
        """LightGBM parameters that make it use exactly these bins."""
        return {"max_bin": MAX_BIN, "forcedbins_filename": str(forced_bins_path),
                "feature_pre_filter": False}

    def raw_threshold(self, feature: int, threshold: float) -> float:
        """The raw-value threshold of a split trained on codes (code <= threshold)."""
        e = self.edges[feature]
        if threshold < 1:  # the bin below code 1: only missing values
            return LOWEST
        c = round(threshold - 0.5)  # LightGBM may print c + 0.5 a few ulps off
        if abs(threshold - (c + 0.5)) > 1e-9 or not 1 <= c <= len(e):
            raise ValueError(f"split threshold {threshold} on feature {feature} is not a code "
                             "boundary; the model was not trained on these bins")
        return float(e[c - 1])

    def raw_model(self, model: str) -> str:
        """A LightGBM model string trained on codes, rewritten to split raw values.

        Each split `code <= c + 0.5` becomes `x <= edges[c - 1]` and the missing-only split
        `x is NaN`; missing values go left everywhere, as code 0 did. The tree sizes in the
        header are recomputed.
        """
        start, end = model.index("Tree=0\n"), model.index("end of trees")
        blocks = re.split(r"(?=^Tree=\d+\n)", model[start:end], flags=re.M)
        trees = [self._raw_tree(b) for b in blocks if b]
        header = re.sub(r"^tree_sizes=.*$", "tree_sizes=" + " ".join(
            str(len(t.encode())) for t in trees), model[:start], count=1, flags=re.M)
        return header + "".join(trees) + model[end:]

    def raw_booster(self, booster: Any) -> Any:
        """A LightGBM Booster trained on codes, as a Booster that splits raw values."""
        import lightgbm as lgb

        return lgb.Booster(model_str=self.raw_model(booster.model_to_string(num_iteration=-1)))

    def _raw_tree(self, block: str) -> str:
        fields = dict(re.findall(r"^(\w+)=(.*)$", block, flags=re.M))
        if "split_feature" not in fields:  # a single-leaf tree
            return block
        feats = [int(f) for f in fields["split_feature"].split()]
        kinds = [int(k) for k in fields["decision_type"].split()]
        if any(k & 1 for k in kinds):
            raise ValueError("categorical splits cannot be translated to raw values")
        raw = [repr(self.raw_threshold(f, float(t)))
               for f, t in zip(feats, fields["threshold"].split(), strict=True)]
        block = re.sub(r"^threshold=.*$", "threshold=" + " ".join(raw), block, count=1,
                       flags=re.M)
        return re.sub(r"^decision_type=.*$", "decision_type=" + " ".join(
            [str(NAN_LEFT)] * len(feats)), block, count=1, flags=re.M)


CODE_BATCH = 65_536
"""Rows of codes that LightGBM converts to floats at a time while it bins a dataset."""


def _code_rows(codes: np.ndarray) -> Any:
    """uint8 codes (n, f) as a `lightgbm.Sequence` that yields float rows a batch at a time."""
    import lightgbm as lgb

    class CodeRows(lgb.Sequence):
        batch_size = CODE_BATCH

        def __len__(self) -> int:
            return len(codes)

        def __getitem__(self, index: int | slice) -> np.ndarray:
            # Single rows are LightGBM's bin sample and must be float64; batches float32.
            if isinstance(index, (int, np.integer)):
                return codes[index].astype(np.float64)
            return codes[index].astype(np.float32)

    return CodeRows()


class LambdaRanker:
    """Fit on grouped rows (users), predict a score per row; `fit` returns self."""

    def __init__(self, config: RankerConfig, features: list[str] | None = None) -> None:
        self.config = config
        self.features = features or []
        self._booster: Any = None
        self.best_iteration = 0

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, features: list[str]
            ) -> LambdaRanker:
        """Train on rows `x` (n, f) with 0/1 labels `y` and per-row group ids `groups` (n,).

        Rows must be sorted by group. Groups without a positive carry no ranking signal and are
        dropped; a seeded share of the remaining groups is held out for early stopping.
        """
        return self.fit_prepared([*self.prepare(x, y, groups, features)])

    def fit_prepared(self, prepared: list[Any]) -> LambdaRanker:
        """Train on what `prepare` returned, given as a list that this empties.

        The code matrices are dropped once LightGBM has binned them, so a caller that
        handed over its only references trains with LightGBM's bins alone in memory.
        """
        import lightgbm as lgb

        c = self.config
        params, (xt, yt, gt), (xv, yv, gv), bins = prepared
        prepared.clear()
        with tempfile.TemporaryDirectory(prefix="recsys-bins-") as tmp:
            forced = Path(tmp) / "forced_bins.json"
            forced.write_text(bins.forced_bins())
            # The bin settings go to the datasets only: LightGBM refuses forced bins again
            # once a dataset is built, and training needs none of them.
            binning = {**params, **bins.params(forced)}
            # The codes go in as a Sequence: LightGBM converts a numpy matrix to float32 whole
            # (4 bytes a value beside the 1-byte codes), a Sequence a batch at a time; the
            # datasets, and so the model, are the same (tested).
            dtrain = lgb.Dataset(_code_rows(xt), yt, group=gt, feature_name=self.features,
                                 params=binning, free_raw_data=True).construct()
            dvalid = lgb.Dataset(_code_rows(xv), yv, group=gv, reference=dtrain,
                                 params=binning, free_raw_data=True).construct()
            del xt, xv  # LightGBM holds its own 1-byte bins from here on
            booster = lgb.train(
                params, dtrain, num_boost_round=c.epochs, valid_sets=[dvalid],
                callbacks=[lgb.early_stopping(c.early_stopping, verbose=False)],
            )
        best = int(booster.best_iteration or c.epochs)
        return self.set_booster(bins.raw_booster(booster), best)

    Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]

    def prepare(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, features: list[str]
                ) -> tuple[dict[str, Any], Arrays, Arrays, FeatureBins]:
        """LightGBM params, the train and validation queries (codes, y, group sizes), the bins.

        The codes stand for the rows in those bins (see `FeatureBins`). Groups without a
        positive are dropped; a seeded share of the rest is held out for early stopping; the
        bins come from the training rows. Shared by the in-process fit and the distributed one.
        """
        c = self.config
        self.features = list(features)
        uniq, starts, sizes = np.unique(groups, return_index=True, return_counts=True)
        order = np.argsort(starts)
        uniq, starts, sizes = uniq[order], starts[order], sizes[order]
        pos = np.add.reduceat(y, starts) if len(y) else np.zeros(0)
        useful = pos > 0
        if useful.sum() < 2:
            raise ValueError("the ranker needs at least two users with a relevant candidate; "
                             "the data is too small or the candidates miss every target item")
        rng = np.random.default_rng(c.seed)
        is_valid = (rng.random(len(uniq)) < c.valid_fraction) & useful
        if is_valid.sum() == 0:
            is_valid[np.flatnonzero(useful)[0]] = True
        is_train = useful & ~is_valid
        row_group = np.repeat(np.arange(len(uniq)), sizes)
        params = {
            "objective": "lambdarank", "metric": "ndcg", "eval_at": [c.eval_at],
            "learning_rate": c.learning_rate, "num_leaves": c.num_leaves,
            "min_data_in_leaf": c.min_data_in_leaf, "feature_fraction": c.feature_fraction,
            "lambdarank_truncation_level": max(c.eval_at * 2, 20),
            "seed": c.seed, "deterministic": True, "force_row_wise": True,
            "num_threads": c.threads, "verbose": -1,
        }
        tr, va = is_train[row_group], is_valid[row_group]
        train_rows, valid_rows = np.flatnonzero(tr), np.flatnonzero(va)
        bins = FeatureBins.fit(x, seed=c.seed, subset=train_rows)
        # uint8 codes: LightGBM reads them as the same float32 values; a quarter of the memory.
        return (params, (bins.codes(x, train_rows), y[tr], sizes[is_train]),
                (bins.codes(x, valid_rows), y[va], sizes[is_valid]), bins)

    def set_booster(self, booster: Any, best_iteration: int) -> LambdaRanker:
        """Adopt a booster trained elsewhere (e.g. by LightGBM on a Dask cluster)."""
        self._booster = booster
        self.best_iteration = int(best_iteration)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores (n,) for rows with the fitted feature order."""
        if self._booster is None:
            raise NotFittedError(type(self).__name__)
        # Threads as configured: a loaded booster would otherwise use every core (OpenMP).
        return np.asarray(self._booster.predict(x, num_iteration=self.best_iteration,
                                                num_threads=self.config.threads))

    def importance(self) -> dict[str, float]:
        """Total gain per feature."""
        if self._booster is None:
            raise NotFittedError(type(self).__name__)
        gains = self._booster.feature_importance("gain")
        return dict(zip(self.features, (float(g) for g in gains), strict=True))

    def to_dict(self) -> dict[str, Any]:
        """The model with its feature list and config (JSON-safe)."""
        if self._booster is None:
            raise NotFittedError(type(self).__name__)
        return {"config": self.config.model_dump(), "features": self.features,
                "best_iteration": self.best_iteration,
                "model": self._booster.model_to_string(num_iteration=self.best_iteration)}

    def save(self, path: Path) -> None:
        """Write `to_dict()` as JSON (callers make it atomic)."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LambdaRanker:
        """Rebuild a fitted ranker from `to_dict()` output, with no outside knowledge."""
        import lightgbm as lgb

        model = cls(RankerConfig.model_validate(data["config"]), list(data["features"]))
        model._booster = lgb.Booster(model_str=data["model"])
        model.best_iteration = int(data["best_iteration"])
        return model
