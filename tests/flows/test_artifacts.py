"""Images inlined in Prefect markdown artifacts: data URIs, scaled down only when too large."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from flows.artifacts import markdown_image


def _png(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _decoded(markdown: str) -> tuple[str, bytes]:
    match = re.fullmatch(r"!\[(.*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match is not None, markdown[:80]
    return match.group(1), base64.b64decode(match.group(2))


def test_small_image_is_inlined_byte_for_byte(tmp_path: Path) -> None:
    path = _png(tmp_path / "small.png", 40, 30)
    alt, data = _decoded(markdown_image(path, "loss curve"))
    assert alt == "loss curve"
    assert data == path.read_bytes()


def test_large_image_is_scaled_to_the_side_limit_keeping_its_shape(tmp_path: Path) -> None:
    path = _png(tmp_path / "large.png", 300, 120)
    _, data = _decoded(markdown_image(path, "grid", max_side=100))
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (100, 40)
        assert image.format == "PNG"
