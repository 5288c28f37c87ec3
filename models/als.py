"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via `implicit`, used as a candidate source."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field
from threadpoolctl import threadpool_limits

from features.errors import NotFittedError


class AlsConfig(BaseModel):
    """Hyperparameters of the ALS candidate source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_size: int = Field(64, ge=1)
    """Number of latent factors."""
    reg: float = Field(0.1, ge=0.0)
    """L2 regularisation."""
    alpha: float = Field(1.0, ge=0.0)
    """Confidence c_ui = 1 + alpha * w_ui for observed pairs."""
    epochs: int = Field(15, ge=1)
    """ALS sweeps from a random start."""
    warm_epochs: int = Field(0, ge=0)
    """ALS sweeps from given starting factors (a later history starting from the factors of
    the cut-off before it); 0 always fits from a random start with `epochs` sweeps."""
    weight: Literal["binary", "raw", "log1p"] = "binary"
    """What w_ui is: 1 for every interaction, the raw weight, or log(1 + weight) (play counts)."""
    seed: int = 0
    """Random state of the factor initialisation."""
    use_gpu: bool = False
    """Train on the GPU (needs implicit's CUDA build and rmm); CPU by default."""
    threads: int = Field(1, ge=0)
    """implicit's own threads (0 = all cores); BLAS is pinned to 1 thread while it runs."""


class AlsModel:
    """ALS factors for users and items; `fit` returns self, scores are dot products."""

    def __init__(self, config: AlsConfig) -> None:
        self.config = config
        self.user_factors: np.ndarray | None = None  # (n_users, f) float32
        self.item_factors: np.ndarray | None = None  # (n_items, f) float32

    def fit(self, user_items: sp.csr_matrix,
            start: tuple[np.ndarray, np.ndarray] | None = None) -> AlsModel:
        """Fit on a users x items weight matrix (CSR).

        `start` is (user, item) factors to begin from, one row per matrix row and column
        (random rows where nothing is known); then `warm_epochs` sweeps run instead of
        `epochs` (unless warm_epochs is 0, or on the GPU, where every fit starts at random).
        """
        from implicit.als import AlternatingLeastSquares

        c = self.config
        warm = start is not None and c.warm_epochs > 0 and not c.use_gpu
        if warm and start is not None:
            n_users, n_items = user_items.shape
            f = c.embedding_size
            if start[0].shape != (n_users, f) or start[1].shape != (n_items, f):
                raise ValueError(f"starting factors {start[0].shape} / {start[1].shape} do not "
                                 f"match the matrix {user_items.shape} with {f} factors")
        data = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        if c.weight == "binary":
            data.data[:] = 1.0
        elif c.weight == "log1p":
            data.data = np.log1p(data.data)
        # implicit warns about (and is slowed by) multithreaded BLAS: pin it while we build
        # (the constructor runs the check) and train.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=c.embedding_size, regularization=c.reg, alpha=c.alpha,
                iterations=c.warm_epochs if warm else c.epochs, random_state=c.seed,
                use_gpu=c.use_gpu, num_threads=c.threads, calculate_training_loss=False,
            )
            if warm and start is not None:  # implicit begins from factors already set
                model.user_factors = np.array(start[0], dtype=np.float32, order="C")
                model.item_factors = np.array(start[1], dtype=np.float32, order="C")
            model.fit(data, show_progress=False)
        if c.use_gpu:  # pragma: no cover - needs CUDA
            model = model.to_cpu()
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def random_start(self, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """implicit's own random start (uniform [0, 0.01), seeded) for users and items."""
        rng = np.random.default_rng(self.config.seed)
        f = self.config.embedding_size
        return (rng.random((n_users, f), dtype=np.float32) * 0.01,
                rng.random((n_items, f), dtype=np.float32) * 0.01)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Dot products <p_u, q_i> for the given user indices: (len(users), n_items)."""
        if self.user_factors is None or self.item_factors is None:
            raise NotFittedError(type(self).__name__)
        return self.user_factors[users] @ self.item_factors.T
