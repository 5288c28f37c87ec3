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
    """ALS sweeps."""
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

    def fit(self, user_items: sp.csr_matrix) -> AlsModel:
        """Fit on a users x items weight matrix (CSR)."""
        from implicit.als import AlternatingLeastSquares

        c = self.config
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
                iterations=c.epochs, random_state=c.seed, use_gpu=c.use_gpu,
                num_threads=c.threads, calculate_training_loss=False,
            )
            model.fit(data, show_progress=False)
        if c.use_gpu:  # pragma: no cover - needs CUDA
            model = model.to_cpu()
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Dot products <p_u, q_i> for the given user indices: (len(users), n_items)."""
        if self.user_factors is None or self.item_factors is None:
            raise NotFittedError(type(self).__name__)
        return self.user_factors[users] @ self.item_factors.T
