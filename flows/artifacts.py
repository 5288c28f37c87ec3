"""What the add-on flows share for the Prefect UI: run names and images inlined in artifacts."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from prefect.runtime import flow_run

from pipelines.store import new_run_id

ARTIFACT_IMAGE_SIDE = 900
"""Images embedded in markdown artifacts are scaled to at most this many pixels per side."""


def run_name() -> str:
    """The flow run's name: its `run_id` parameter, or a fresh run id the flow then adopts."""
    given = flow_run.parameters.get("run_id")
    return str(given) if given else new_run_id()


def markdown_image(path: Path, alt: str, max_side: int = ARTIFACT_IMAGE_SIDE) -> str:
    """A markdown image with the PNG inlined as a base64 data URI, at most `max_side` px a side.

    The Prefect UI loads neither relative paths nor file:// links, so the bytes go in the
    artifact itself.
    """
    from PIL import Image

    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
            data = buffer.getvalue()
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"
