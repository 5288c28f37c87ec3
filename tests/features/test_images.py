"""Image loading for style transfer: modes, sizes, bad files, tensors, crops."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from features.errors import DataError
from features.images import (
    MIN_SIDE,
    list_images,
    load_image,
    random_crops,
    side_by_side,
    to_png_bytes,
    to_tensor,
    to_uint8,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "features" / "data" / "images"


def _save(tmp_path: Path, name: str, image: Image.Image) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "CMYK", "1"])
def test_any_mode_loads_as_rgb_float(tmp_path: Path, mode: str, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    image = Image.fromarray(arr).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 200)
        assert image.mode.startswith("I;16")
    suffix = ".jpg" if mode == "CMYK" else ".png"  # PNG cannot hold CMYK
    out = load_image(_save(tmp_path, f"img{suffix}", image))
    assert out.shape == (40, 30, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 10:, 3] = 255
    out = load_image(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert np.allclose(out[:, :10], 1.0)
    assert np.allclose(out[:, 10:], [1.0, 0.0, 0.0])


def test_greyscale_copies_to_three_channels(tmp_path: Path) -> None:
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))
    out = load_image(_save(tmp_path, "g.png", Image.fromarray(grey, "L")))
    assert np.allclose(out[..., 0], out[..., 1]) and np.allclose(out[..., 1], out[..., 2])


def test_long_side_and_exact_sizes(caplog: pytest.LogCaptureFixture) -> None:
    path = SHIPPED / "content" / "chelsea.jpg"  # 384 x 255
    with caplog.at_level(logging.INFO, logger="features.images"):
        assert load_image(path, 64).shape == (42, 64, 3)
        assert load_image(path, (32, 32)).shape == (32, 32, 3)
    assert "resized from 384x255 to 64x42" in caplog.text
    assert "centre-cropped" in caplog.text


def test_huge_jpeg_is_shrunk_with_a_message(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    big = Image.new("RGB", (4000, 3000), (10, 200, 30))
    path = tmp_path / "big.jpg"
    big.save(path, quality=50)
    with caplog.at_level(logging.INFO, logger="features.images"):
        out = load_image(path, 100)
    assert out.shape == (75, 100, 3)
    assert "from 4000x3000 to 100x75" in caplog.text


def test_unreadable_files_raise_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="junk.png"):
        load_image(junk)
    good = tmp_path / "cut.jpg"
    Image.new("RGB", (200, 200), (1, 2, 3)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated.jpg"):
        load_image(truncated)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(IsADirectoryError):
        load_image(tmp_path)


def test_too_small_is_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path, "tiny.png", Image.new("RGB", (8, 40)))
    with pytest.raises(DataError, match="at least"):
        load_image(path)
    with pytest.raises(ValueError, match="too small"):
        load_image(SHIPPED / "content" / "chelsea.jpg", MIN_SIDE - 1)


def test_list_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    _save(tmp_path, "b.PNG", Image.new("RGB", (20, 20)))
    _save(tmp_path, "a.jpg", Image.new("RGB", (20, 20)))
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert len(list_images(SHIPPED / "content")) >= 2 and list_images(SHIPPED / "style")


def test_tensor_round_trip(rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    tensor = to_tensor(arr.astype(np.float32) / 255)
    assert tensor.shape == (1, 3, 17, 23)
    assert np.array_equal(to_uint8(tensor), arr)
    assert to_png_bytes(tensor)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="RGB"):
        to_tensor(np.zeros((4, 4)))


def test_random_crops_are_seeded_and_in_range() -> None:
    images = [torch.rand(1, 3, 40, 50), torch.rand(1, 3, 33, 33)]
    a = random_crops(images, 3, 32, torch.Generator().manual_seed(1))
    b = random_crops(images, 3, 32, torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_random_crops_scale_range() -> None:
    """short_side sets the scale: (1, 1) crops the image at its own short side, unscaled."""
    image = torch.rand(1, 3, 32, 48)
    crops = random_crops([image], 6, 32, torch.Generator().manual_seed(0), short_side=(1.0, 1.0))
    for crop in crops:  # a horizontal window of the image, maybe flipped
        matches = [torch.allclose(crop, w) or torch.allclose(crop.flip(-1), w)
                   for w in (image[0, :, :, i : i + 32] for i in range(17))]
        assert any(matches)
    with pytest.raises(ValueError, match="short_side"):
        random_crops([image], 1, 16, torch.Generator(), short_side=(2.0, 1.0))
    big = random_crops([image], 2, 16, torch.Generator().manual_seed(0), short_side=(2.0, 2.5))
    assert big.shape == (2, 3, 16, 16)


def test_side_by_side_shape() -> None:
    tiles = [np.zeros((10, 20, 3), np.uint8), np.zeros((20, 20, 3), np.uint8)]
    assert side_by_side(tiles, height=40, gap=2).shape == (40, 80 + 40 + 2, 3)
