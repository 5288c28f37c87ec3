"""Torch helpers shared by the generative and style models: device choice, seeding, checkpoints."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

DeviceChoice = Literal["auto", "cpu", "cuda"]


def pick_device(choice: str = "auto") -> torch.device:
    """Resolve `auto|cpu|cuda` to a torch device; `cuda` without a GPU is an error."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be one of auto, cpu, cuda; got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def set_threads(n: int | None = None) -> int:
    """Pin torch's intra-op threads (default: RECSYS_TORCH_THREADS or 1) and return the count.

    Measured on a 2-core machine: 2 threads while another process holds a core made a step 69x
    slower than 1 thread, so the default is 1 unless the operator says otherwise.
    """
    n = n or int(os.environ.get("RECSYS_TORCH_THREADS", "1"))
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a torch generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """torch.save `payload` atomically (temp name + rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint saved by `save_checkpoint` (tensors and plain Python values only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    return ckpt
