"""Style jobs without Prefect: outputs in a published run folder, bad input, failure cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from features.errors import DataError
from models.generative.style import (
    FastTrainConfig,
    OptimiseConfig,
    TransformNetConfig,
    load_transform_net,
)
from models.torch_utils import set_threads
from pipelines.addons.style import (
    DEFAULT_CONTENT,
    DEFAULT_STYLE,
    expand_images,
    history_table,
    run_apply,
    run_optimise,
    run_train,
)

set_threads(1)
TINY_NET = TransformNetConfig(channels=4, n_residual=1)
TINY_TRAIN = FastTrainConfig(steps=3, batch_size=2, crop_size=24, style_size=32, seed=1)


def test_history_table_schema() -> None:
    rows = [{"step": 1.0, "total": 3.0, "content": 1.0, "style": 0.2, "seconds": 0.1}]
    table = history_table(rows)
    assert table.column_names == ["step", "total", "content", "style", "seconds"]
    assert str(table.schema.field("step").type) == "int32"


def test_optimise_writes_a_published_run(tmp_path: Path) -> None:
    result = run_optimise(size=32, optimise_config=OptimiseConfig(steps=4), root=tmp_path,
                          device="cpu", run_id="opt1")
    run = tmp_path / "runs" / "opt1"
    assert result.run_dir == run and not (tmp_path / "runs" / ".staging-opt1").exists()
    assert not (tmp_path / "runs" / "latest").exists()  # only the recommender moves latest
    for name in ("optimised.png", "side_by_side.png", "loss_curve.parquet", "loss_curve.png",
                 "timings.json"):
        assert (run / "style" / name).is_file(), name
    with Image.open(run / "style" / "optimised.png") as image:
        assert image.size == (32, 21)  # 384x255 cat, long side 32
    curve = pq.read_table(run / "style" / "loss_curve.parquet")
    assert curve.num_rows >= 4 and curve.column_names[0] == "step"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["command"] == "optimise" and manifest["config"]["optimise"]["steps"] == 4
    assert result.metrics["final_total"] < result.metrics["initial_total"]
    assert result.timings["optimise_s"] > 0


def test_train_then_apply(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 20, 4), dtype=np.uint8), "RGBA").save(
        photos / "b.png")
    trained = run_train(DEFAULT_STYLE, photos, root=tmp_path, net_config=TINY_NET,
                        train_config=TINY_TRAIN, device="cpu", run_id="train1")
    ckpt = trained.files["checkpoint"]
    assert ckpt == tmp_path / "runs" / "train1" / "style" / "transform_net.pt"
    net, meta = load_transform_net(ckpt)
    assert net.config == TINY_NET and meta["style_name"] == "starry_night.jpg"
    assert meta["style_image"].shape[-1] == 32  # style at style_size on its long side
    assert pq.read_table(trained.run_dir / "style" / "train_loss.parquet").num_rows == 3
    assert (trained.run_dir / "style" / "preview.png").is_file()

    odd = tmp_path / "odd.png"
    Image.fromarray(rng.integers(0, 255, (33, 47), dtype=np.uint8), "L").save(odd)
    applied = run_apply(ckpt, [odd, photos], root=tmp_path, size=None, device="cpu",
                        run_id="apply1")
    out = applied.run_dir / "style"
    with Image.open(out / "odd.png") as image:
        assert image.size == (47, 33) and image.mode == "RGB"
    assert {p.name for p in out.glob("*.png")} == {"odd.png", "a.png", "b.png"}
    timings = pq.read_table(out / "apply_timings.parquet").to_pylist()
    assert [r["height"] for r in timings] == [33, 30, 50]
    assert applied.timings["images"] == 3


def test_same_stems_do_not_overwrite(tmp_path: Path) -> None:
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / sub / "p.png")
    trained = run_train(DEFAULT_STYLE, [DEFAULT_CONTENT], root=tmp_path, net_config=TINY_NET,
                        train_config=TINY_TRAIN, device="cpu", preview=None)
    applied = run_apply(trained.files["checkpoint"], [tmp_path / "x", tmp_path / "y"],
                        root=tmp_path, size=None, device="cpu")
    assert sorted(p.name for p in (applied.run_dir / "style").glob("*.png")) == ["p.png",
                                                                                 "p_.png"]


def test_bad_input_names_the_file_and_leaves_no_run(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="junk.jpg"):
        run_optimise(junk, DEFAULT_STYLE, size=32, root=tmp_path, device="cpu", run_id="bad")
    assert not (tmp_path / "runs" / "bad").exists()
    assert not (tmp_path / "runs" / ".staging-bad").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        expand_images([tmp_path / "empty"])
    with pytest.raises(ValueError, match="not a style"):
        run_apply(DEFAULT_CONTENT, [DEFAULT_CONTENT], root=tmp_path, device="cpu")
