"""Benchmark: per-image optimisation (Gatys, the reference) vs a trained fast network (Johnson).

Run: `python bench/style.py [--sizes 256] [--opt-steps 200] [--train-steps 3000] ...`, or
`--checkpoint runs/<id>/style/transform_net.pt` to judge a network trained before.

1. Train the fast network for the style on random crops (random scale, horizontal flips) of
   every shipped content photo (`--hold-out NAME` keeps one out), with S fixed at
   `--style-size` px, and time it (wall clock and process CPU time).
2. At each size N, stylise every shipped content photo (centre-cropped to N x N) both ways and
   measure the wall time per image (the network: median of several forward passes after a
   warm-up) and the perceptual loss L(C, S, X) each reaches, with the same S and weights.
3. Print loss ratio and speed ratio side by side per photo and their mean (targets: fast
   >= 100x faster at <= 1.5x the optimisation's loss) and write a table, loss curves and a
   side-by-side grid (rows: photos; columns: content, style, optimised, fast) to
   `<output>/runs/<run_id>/style/`; `--docs` also writes the 256 px grid to docs/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from features.images import (  # noqa: E402
    list_images,
    load_image,
    side_by_side,
    to_png_bytes,
    to_tensor,
    to_uint8,
)
from models.generative.style import (  # noqa: E402
    FastTrainConfig,
    OptimiseConfig,
    PerceptualLoss,
    StyleConfig,
    TransformNet,
    TransformNetConfig,
    load_transform_net,
    optimise,
    save_transform_net,
    train_fast,
)
from models.generative.vgg import load_vgg  # noqa: E402
from models.torch_utils import pick_device, seed_everything, set_threads  # noqa: E402
from pipelines.addons.style import (  # noqa: E402
    DEFAULT_STYLE,
    DEFAULT_TRAIN_IMAGES,
    history_table,
    load_training_images,
    plot_loss_png,
)
from pipelines.store import RunFolder, new_run_id, write_bytes_atomic  # noqa: E402

DEFAULTS_TRAIN = FastTrainConfig()
DEFAULTS_NET = TransformNetConfig()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fast(net: TransformNet, x: torch.Tensor, device: torch.device,
              repeats: int) -> tuple[torch.Tensor, float]:
    """Stylised image and the median seconds of `repeats` forward passes after one warm-up."""
    y = net.stylise(x)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        y = net.stylise(x)
        sync(device)
        times.append(time.perf_counter() - start)
    return y, statistics.median(times)


def reuse_optimisation(run_dir: Path, size: int, photo: str, stem: str, steps: int
                       ) -> tuple[torch.Tensor, list[dict[str, float]], float]:
    """The optimised image, loss history and wall time of `photo` from an earlier bench run."""
    style_dir = Path(run_dir) / "style"
    rows = pq.read_table(style_dir / "bench.parquet").to_pylist()
    row = next((r for r in rows if r["size"] == size and r["photo"] == photo), None)
    if row is None or row["opt_steps"] != steps:
        raise SystemExit(f"{run_dir} has no {size}px optimisation of {photo} with {steps} steps")
    x_opt = torch.load(style_dir / f"bench_optimised_{stem}.pt")  # (1, 3, N, N) float

    history = pq.read_table(style_dir / f"bench_opt_loss_{stem}.parquet").to_pylist()
    return x_opt, history, float(row["opt_s"])


def grid(rows: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Stack equal-width (H, W, 3) uint8 strips top to bottom on white."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + gap * (len(rows) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for strip in rows:
        canvas[y : y + strip.shape[0], : strip.shape[1]] = strip
        y += strip.shape[0] + gap
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", type=Path, default=DEFAULT_STYLE)
    ap.add_argument("--images", type=Path, default=DEFAULT_TRAIN_IMAGES,
                    help="content photos: trained on and judged on (default: the shipped ones)")
    ap.add_argument("--hold-out", default=None,
                    help="file name of one photo to keep out of training (judged all the same)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--style-size", type=int, default=256)
    ap.add_argument("--opt-steps", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=DEFAULTS_TRAIN.steps)
    ap.add_argument("--batch-size", type=int, default=DEFAULTS_TRAIN.batch_size)
    ap.add_argument("--crop", type=int, default=DEFAULTS_TRAIN.crop_size)
    ap.add_argument("--short-side", type=float, nargs=2, default=DEFAULTS_TRAIN.short_side,
                    help="crop scale: image short side in multiples of --crop")
    ap.add_argument("--channels", type=int, default=DEFAULTS_NET.channels)
    ap.add_argument("--n-residual", type=int, default=DEFAULTS_NET.n_residual)
    ap.add_argument("--learning-rate", type=float, default=DEFAULTS_TRAIN.learning_rate)
    ap.add_argument("--lr-schedule", default=DEFAULTS_TRAIN.lr_schedule,
                    choices=["cosine", "constant"])
    ap.add_argument("--style-weight", type=float, default=StyleConfig().style_weight)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", type=Path, default=REPO)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="judge this trained network instead of training one")
    ap.add_argument("--reuse-optimisation", type=Path, default=None, metavar="RUN_DIR",
                    help="take the optimisation results (loss, time, image) from an earlier "
                         "bench run folder with the same style, sizes and --opt-steps instead "
                         "of re-running them (they are deterministic; saves minutes per photo)")
    ap.add_argument("--docs", action="store_true", help="write the 256 px grid to docs/")
    args = ap.parse_args()

    threads = set_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(0)
    folder = RunFolder(args.output, new_run_id()).create()
    out = folder.path("style")
    loss_cfg = StyleConfig(style_weight=args.style_weight)
    vgg = load_vgg(device)
    style = to_tensor(load_image(args.style, args.style_size)).to(device)
    loss = PerceptualLoss(vgg, loss_cfg, style)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    photos = list_images(args.images)
    print(f"device {device_name}, torch threads {threads}, style {args.style.name} at "
          f"{tuple(style.shape[-2:])}, photos {[p.name for p in photos]}")

    # 1. the fast network: trained here on every photo (bar --hold-out), or loaded
    train_paths = [p for p in photos if p.name != args.hold_out]
    train: dict[str, object] = {}
    if args.checkpoint:
        net, meta = load_transform_net(args.checkpoint, device)
        net_cfg, train_cfg = net.config, meta["train_config"]
        train = {"checkpoint": str(args.checkpoint), "steps": meta["step"]}
        print(f"judging {args.checkpoint} ({net_cfg}, {meta['step']} steps, {train_cfg})")
    else:
        train_cfg = FastTrainConfig(steps=args.train_steps, batch_size=args.batch_size,
                                    crop_size=args.crop, style_size=args.style_size,
                                    short_side=tuple(args.short_side),
                                    learning_rate=args.learning_rate,
                                    lr_schedule=args.lr_schedule)
        net_cfg = TransformNetConfig(channels=args.channels, n_residual=args.n_residual)
        net = TransformNet(net_cfg).to(device)
        wall, cpu = time.perf_counter(), time.process_time()
        history = train_fast(net, loss, load_training_images(train_paths, args.crop), train_cfg,
                             progress=True)
        sync(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        train = {"steps": train_cfg.steps, "wall_s": wall, "cpu_s": cpu,
                 "images": [p.name for p in train_paths]}
        print(f"trained {net_cfg} on {train['images']}: {train_cfg.steps} steps x "
              f"{train_cfg.batch_size} crops of {train_cfg.crop_size}px in {wall:.0f}s wall, "
              f"{cpu:.0f}s CPU ({cpu / train_cfg.steps:.2f} CPU s/step)")
        save_transform_net(out / "transform_net.pt", net, style_config=loss_cfg,
                           train_config=train_cfg, style_image=style,
                           style_name=args.style.name, step=train_cfg.steps)
        folder.write_table("bench_train_loss", history_table(history), "style")
        write_bytes_atomic(plot_loss_png(history, "fast network training"),
                           out / "bench_train_loss.png")
    n_params = sum(p.numel() for p in net.parameters())

    # 2. both methods on every photo at each size, same S, same loss
    rows: list[dict[str, object]] = []
    strips: dict[int, list[np.ndarray]] = {}
    for size in args.sizes:
        for photo in photos:
            content = to_tensor(load_image(photo, (size, size))).to(device)
            baseline = loss.evaluate(content, content)["total"]
            stem = f"{size}_{photo.stem}"
            if args.reuse_optimisation:
                x_opt, history, opt_s = reuse_optimisation(args.reuse_optimisation, size,
                                                           photo.name, stem, args.opt_steps)
                x_opt = x_opt.to(device)
            else:
                sync(device)
                start = time.perf_counter()
                x_opt, history = optimise(loss, content, OptimiseConfig(steps=args.opt_steps),
                                          progress=True)
                sync(device)
                opt_s = time.perf_counter() - start
            opt_loss = loss.evaluate(x_opt, content)
            y_fast, fast_s = time_fast(net, content, device, args.repeats)
            fast_loss = loss.evaluate(y_fast, content)
            reach = next((r for r in history if r["total"] <= fast_loss["total"]), None)
            row = {
                "size": size, "photo": photo.name, "trained_on": photo in train_paths,
                "device": device_name, "opt_steps": len(history), "opt_s": opt_s,
                "fast_s": fast_s, "speedup": opt_s / fast_s, "loss_content_image": baseline,
                "opt_loss": opt_loss["total"], "opt_content": opt_loss["content"],
                "opt_style": opt_loss["style"], "fast_loss": fast_loss["total"],
                "fast_content": fast_loss["content"], "fast_style": fast_loss["style"],
                "loss_ratio": fast_loss["total"] / opt_loss["total"],
                "opt_steps_to_fast_loss": reach["step"] if reach else None,
                "opt_s_to_fast_loss": reach["seconds"] if reach else None,
            }
            rows.append(row)
            print(f"{size}px {photo.name}: optimisation {opt_s:.1f}s loss "
                  f"{opt_loss['total']:.3f} | fast {fast_s * 1000:.0f}ms loss "
                  f"{fast_loss['total']:.3f} | loss ratio {row['loss_ratio']:.2f}, speed "
                  f"ratio {row['speedup']:.0f}x (content image itself {baseline:.1f}; "
                  f"optimisation reaches the fast loss after {row['opt_steps_to_fast_loss']} "
                  "evaluations)", flush=True)
            folder.write_table(f"bench_opt_loss_{stem}", history_table(history), "style")
            write_bytes_atomic(to_png_bytes(x_opt), out / f"bench_optimised_{stem}.png")
            torch.save(x_opt.cpu(), out / f"bench_optimised_{stem}.pt")
            write_bytes_atomic(plot_loss_png(history, f"optimisation {photo.stem} {size}px"),
                               out / f"bench_opt_loss_{stem}.png")
            strips.setdefault(size, []).append(side_by_side(
                [to_uint8(content), to_uint8(style), to_uint8(x_opt), to_uint8(y_fast)],
                height=min(size, 256)))
        write_bytes_atomic(to_png_bytes(grid(strips[size])), out / f"side_by_side_{size}.png")

    folder.write_table("bench", pa.Table.from_pylist(rows), "style")
    summary = []
    print(f"\nnetwork {net_cfg} ({n_params / 1e6:.2f} M parameters), training {train}")
    print(f"{'size':>5} {'photo':16s} {'opt s':>8} {'fast s':>7} {'speed ratio':>12} "
          f"{'opt loss':>9} {'fast loss':>10} {'loss ratio':>11}")
    for size in args.sizes:
        mine = [r for r in rows if r["size"] == size]
        for r in mine:
            print(f"{size:5d} {r['photo']:16s} {r['opt_s']:8.1f} {r['fast_s']:7.3f} "
                  f"{r['speedup']:11.0f}x {r['opt_loss']:9.3f} {r['fast_loss']:10.3f} "
                  f"{r['loss_ratio']:11.2f}")
        ratio = float(np.mean([r["loss_ratio"] for r in mine]))
        worst = max(float(r["loss_ratio"]) for r in mine)  # type: ignore[arg-type]
        speed = float(np.mean([r["speedup"] for r in mine]))
        ok = speed >= 100 and worst <= 1.5
        summary.append({"size": size, "mean_loss_ratio": ratio, "worst_loss_ratio": worst,
                        "mean_speedup": speed, "pass": ok})
        print(f"{size:5d} {'mean':16s} {'':8s} {'':7s} {speed:11.0f}x {'':9s} {'':10s} "
              f"{ratio:11.2f}   worst {worst:.2f}: speed >= 100x and loss <= 1.5x on every "
              f"photo: {'PASS' if ok else 'MISS'}")
    manifest = {"topic": "style", "command": "bench", "rows": rows, "summary": summary,
                "optimisation_from": str(args.reuse_optimisation or "this run"),
                "train": train, "train_config": train_cfg.model_dump(),
                "net": net_cfg.model_dump(), "parameters": n_params,
                "loss": loss_cfg.model_dump(), "threads": threads}
    final = folder.publish(manifest, update_latest=False)
    print(json.dumps(summary, indent=1))
    if args.docs and 256 in strips:  # small copy for the docs: 256-colour palette
        small = Image.fromarray(grid([side_by_side([s], height=160) for s in strips[256]]))
        buffer = io.BytesIO()
        small.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
        write_bytes_atomic(buffer.getvalue(), REPO / "docs" / "style_side_by_side.png")
    print(f"results in {final}")


if __name__ == "__main__":
    main()
