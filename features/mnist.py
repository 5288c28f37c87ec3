"""MNIST digits: IDX reader, the shipped copy's location, a seeded split and two-moons toy data."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import DataError
from features.resources import data_path

MNIST_DIR = data_path("mnist")
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"

# IDX magic: two zero bytes, a type code, then the number of dimensions (LeCun's format page).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (plain or gzip) into an array of its stored shape and type."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such IDX file; the repository ships MNIST in {MNIST_DIR}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4]!r}); expected 00 00 TT NN")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data; the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_mnist(folder: Path = MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 from `folder` (default: the shipped copy)."""
    images = read_idx(Path(folder) / IMAGES_FILE)
    labels = read_idx(Path(folder) / LABELS_FILE).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{folder}: images {images.shape} and labels {labels.shape} do not pair up; "
            "expected (N, 28, 28) and (N,)"
        )
    return images, labels


@dataclass(frozen=True)
class Split:
    """Row indices of one seeded train/validation split."""

    train: np.ndarray
    validation: np.ndarray


def split_indices(n: int, *, val_fraction: float, seed: int) -> Split:
    """Shuffle 0..n-1 with `seed` and hold out `val_fraction` of them (at least one row a side)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 rows to split, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return Split(train=np.sort(order[n_val:]), validation=np.sort(order[:n_val]))


def two_moons(n: int, *, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """`n` points (n, 2) float32 on two interleaved half circles plus Gaussian noise (numpy only).

    Same construction as scikit-learn's make_moons: an upper half circle centred at (0, 0) and a
    lower one centred at (1, 0.5), both of radius 1, with points spread evenly in angle.
    """
    rng = np.random.default_rng(seed)
    n_upper = n // 2
    theta_upper = np.linspace(0.0, np.pi, n_upper)
    theta_lower = np.linspace(0.0, np.pi, n - n_upper)
    upper = np.stack([np.cos(theta_upper), np.sin(theta_upper)], axis=1)
    lower = np.stack([1.0 - np.cos(theta_lower), 0.5 - np.sin(theta_lower)], axis=1)
    points = np.concatenate([upper, lower]) + rng.normal(scale=noise, size=(n, 2))
    return points[rng.permutation(n)].astype(np.float32)
