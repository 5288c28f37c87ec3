"""Image load, convert, resize and augment for style transfer (PIL and numpy/torch only)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from features.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MIN_SIDE = 16
"""Smallest side we accept after resizing: the transformation network halves twice and VGG
pools twice, and instance norm needs more than one pixel per channel."""
MAX_SOURCE_PIXELS = 400_000_000
"""Refuse to decode images larger than this (PIL's own bomb guard stops at ~179 Mpx)."""

Size = int | tuple[int, int] | None
"""Target size: None keeps the image, an int is the long side (aspect kept), (height, width) is
exact (centre crop to that aspect, then resize)."""


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise FileNotFoundError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise IsADirectoryError(f"image {path} is a folder; pass an image file (PNG, JPEG, ...)")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS // 2  # PIL errors at twice its limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot read image {path}: {exc}; use a PNG or JPEG file (re-save it in an editor)"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"image {path} is too large to decode safely ({exc}); shrink it below "
            f"{MAX_SOURCE_PIXELS // 1_000_000} Mpx first"
        ) from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return image


def _target_hw(width: int, height: int, size: Size) -> tuple[int, int]:
    if size is None:
        return height, width
    if isinstance(size, int):
        scale = size / max(width, height)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return int(size[0]), int(size[1])


def _check_size(size: Size) -> None:
    sides = [] if size is None else [size] if isinstance(size, int) else list(size)
    if any(int(s) < MIN_SIDE for s in sides):
        raise ValueError(f"image size {size} is too small; use at least {MIN_SIDE} px per side")


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Convert any PIL mode to RGB: alpha is composited on white, greyscale copied to 3 channels."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        log.info("%s: mode %s has transparency; composited on white and converted to RGB",
                 name, mode)
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits by its own range before converting
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        image = Image.fromarray(arr.astype(np.uint8), mode="L")
    log.info("%s: converted mode %s to RGB", name, mode)
    return image.convert("RGB")


def resize(image: Image.Image, size: Size, name: str = "image",
           source_size: tuple[int, int] | None = None) -> Image.Image:
    """Resize an RGB image to `size` (see `Size`), centre-cropping first when the aspect changes.

    `source_size` (width, height) is the file's size for the log message when `image` was
    decoded at a reduced scale.
    """
    _check_size(size)
    width, height = image.size
    th, tw = _target_hw(width, height, size)
    if (th, tw) == (height, width):
        return image
    how = "resized"
    if not isinstance(size, int) and size is not None:
        # centre crop to the target aspect so nothing is stretched
        aspect = tw / th
        if width / height > aspect:
            cw = round(height * aspect)
            left = (width - cw) // 2
            image = image.crop((left, 0, left + cw, height))
        elif width / height < aspect:
            ch = round(width / aspect)
            top = (height - ch) // 2
            image = image.crop((0, top, width, top + ch))
        if image.size != (width, height):
            how = "centre-cropped to the aspect and resized"
    sw, sh = source_size or (width, height)
    log.info("%s: %s from %dx%d to %dx%d (width x height)", name, how, sw, sh, tw, th)
    return image.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=3.0)


def load_image(path: str | Path, size: Size = None) -> np.ndarray:
    """Read an image file as float32 RGB in [0, 1], shape (H, W, 3), resized to `size`.

    Any PIL-readable mode is accepted (RGBA, palette, greyscale, 16-bit) and converted; huge
    JPEGs are decoded at a reduced scale first. Unreadable files raise a DataError naming the file.
    """
    path = Path(path)
    _check_size(size)
    image = _open(path)
    source_size = image.size
    if image.format == "JPEG" and size is not None:
        th, tw = _target_hw(*image.size, size)
        # decode at the smallest 1/2^k scale still at least twice the target (fast for huge files)
        image.draft("RGB", (max(tw, th) * 2, max(tw, th) * 2) if isinstance(size, int)
                    else (tw * 2, th * 2))
    try:
        image.load()  # PIL opens lazily: truncated or corrupt pixel data fails here
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot decode image {path}: {exc}; the file may be truncated, re-save or replace it"
        ) from exc
    image = to_rgb(image, path.name)
    image = resize(image, size, path.name, source_size)
    if min(image.size) < MIN_SIDE:
        raise DataError(
            f"image {path} is {image.size[0]}x{image.size[1]} px; style transfer needs at least "
            f"{MIN_SIDE} px per side: pass a larger --size or a larger image"
        )
    return np.asarray(image, dtype=np.float32) / 255.0


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted; a DataError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"no images in {folder}; put PNG or JPEG files ({', '.join(IMAGE_SUFFIXES)}) there"
        )
    return files


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float array in [0, 1] -> (1, 3, H, W) float32 tensor."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().unsqueeze(0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) tensor in [0, 1] -> (H, W, 3) uint8 array (values clamped)."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {image.shape[0]}")
        image = image[0]
    arr = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    return arr.transpose(1, 2, 0)


def to_png_bytes(image: torch.Tensor | np.ndarray) -> bytes:
    """Encode an image tensor (see `to_uint8`) or a (H, W, 3) uint8 array as PNG bytes."""
    arr = to_uint8(image) if isinstance(image, torch.Tensor) else image
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def side_by_side(images: Sequence[np.ndarray], height: int = 256, gap: int = 4) -> np.ndarray:
    """Tile (H, W, 3) uint8 images left to right, each scaled to `height`, on a white strip."""
    tiles = []
    for arr in images:
        pil = Image.fromarray(arr)
        width = max(1, round(pil.size[0] * height / pil.size[1]))
        tiles.append(np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS)))
    total = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    canvas = np.full((height, total, 3), 255, dtype=np.uint8)
    x = 0
    for tile in tiles:
        canvas[:, x : x + tile.shape[1]] = tile
        x += tile.shape[1] + gap
    return canvas


def random_crops(images: Sequence[torch.Tensor], n: int, size: int,
                 generator: torch.Generator,
                 short_side: tuple[float, float] = (1.0, 1.5)) -> torch.Tensor:
    """Draw `n` random `size`x`size` crops with random horizontal flips -> (n, 3, size, size).

    Each crop picks an image uniformly, scales it so its short side lies uniformly in
    [short_side[0] * size, short_side[1] * size] (so crops see varied scales; at least `size`),
    then crops and flips. Inputs are (1, 3, H, W) tensors.
    """
    lo, hi = short_side
    if not 0 < lo <= hi:
        raise ValueError(f"short_side must be (lo, hi) with 0 < lo <= hi, got {short_side}")
    out = torch.empty(n, 3, size, size)
    for k in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = img.shape[-2:]
        short = size * (lo + (hi - lo) * float(torch.rand(1, generator=generator)))
        scale = short / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        scaled = torch.nn.functional.interpolate(img, size=(nh, nw), mode="bilinear",
                                                 align_corners=False, antialias=scale < 1)
        top = int(torch.randint(nh - size + 1, (1,), generator=generator))
        left = int(torch.randint(nw - size + 1, (1,), generator=generator))
        crop = scaled[0, :, top : top + size, left : left + size]
        if float(torch.rand(1, generator=generator)) < 0.5:
            crop = crop.flip(-1)
        out[k] = crop.clamp(0, 1)
    return out
