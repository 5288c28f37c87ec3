"""Locate the data shipped inside the package (embedded ratings, digits, images, audio, weights)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(*parts: str) -> Path:
    """Path of a file or folder under the package's `features/data/`, installed or editable.

    The data ships as package data, so this works from a wheel as well as from a checkout.
    """
    root = Path(str(resources.files("features") / "data"))
    return root.joinpath(*parts)
