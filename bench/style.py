"""Benchmark: per-image optimisation (Gatys, the reference) vs a trained fast network (Johnson).

Run: `python bench/style.py [--sizes 256 512] [--opt-steps 200] [--train-steps 1000] ...`.

1. Train the fast network for the style on random crops of the shipped content photos *except*
   the evaluation photo (held out), with the style image S fixed at `--style-size` px.
2. At each size N (content centre-cropped to N x N), stylise the held-out photo both ways and
   measure the wall time per image (the network: median of several forward passes after a
   warm-up) and the perceptual loss L(C, S, X) each reaches, with the same S and weights.
3. Print the ratios (target: fast >= 100x faster at <= 1.5x the optimisation's loss) and write
   a table, loss curves and side-by-side PNGs (content, style, optimised, fast) to
   `<output>/runs/<run_id>/style/`; `--docs` also copies the first panel to docs/.
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

import pyarrow as pa  # noqa: E402
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
from pipelines.store import RunFolder, new_run_id, write_bytes_atomic  # noqa: E402
from pipelines.style import (  # noqa: E402
    DEFAULT_CONTENT,
    DEFAULT_STYLE,
    DEFAULT_TRAIN_IMAGES,
    history_table,
    load_training_images,
    plot_loss_png,
)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--content", type=Path, default=DEFAULT_CONTENT)
    ap.add_argument("--style", type=Path, default=DEFAULT_STYLE)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--style-size", type=int, default=256)
    ap.add_argument("--opt-steps", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--n-residual", type=int, default=5)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", type=Path, default=REPO)
    ap.add_argument("--docs", action="store_true", help="copy the first panel to docs/")
    ap.add_argument("--resume", type=Path, default=None,
                    help="continue training this bench checkpoint (same net config) for "
                         "--train-steps more steps")
    args = ap.parse_args()

    threads = set_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(0)
    folder = RunFolder(args.output, new_run_id()).create()
    out = folder.path("style")
    loss_cfg = StyleConfig()
    vgg = load_vgg(device)
    style = to_tensor(load_image(args.style, args.style_size)).to(device)
    loss = PerceptualLoss(vgg, loss_cfg, style)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device_name}, torch threads {threads}, style {args.style.name} at "
          f"{tuple(style.shape[-2:])}, content {args.content.name} (held out of training)")

    # 1. train the fast network on the other shipped photos
    train_paths = [p for p in list_images(DEFAULT_TRAIN_IMAGES) if p.name != args.content.name]
    train_cfg = FastTrainConfig(steps=args.train_steps, batch_size=args.batch_size,
                                crop_size=args.crop, style_size=args.style_size,
                                learning_rate=args.learning_rate)
    net_cfg = TransformNetConfig(channels=args.channels, n_residual=args.n_residual)
    net = TransformNet(net_cfg).to(device)
    done_steps = 0
    if args.resume:
        net, meta = load_transform_net(args.resume, device)
        net_cfg, done_steps = net.config, int(meta["step"])
        print(f"resuming {args.resume} after {done_steps} steps")
    start = time.perf_counter()
    train_cfg = train_cfg.model_copy(update={"seed": done_steps})  # fresh crops when resuming
    train_history = train_fast(net, loss, load_training_images(train_paths, args.crop), train_cfg)
    sync(device)
    train_s = time.perf_counter() - start
    print(f"trained {net_cfg} on {[p.name for p in train_paths]}: {args.train_steps} steps x "
          f"{args.batch_size} crops of {args.crop}px in {train_s:.0f}s "
          f"({train_s / args.train_steps:.2f}s/step)")
    save_transform_net(out / "transform_net.pt", net, style_config=loss_cfg,
                       train_config=train_cfg, style_image=style, style_name=args.style.name,
                       step=done_steps + args.train_steps)
    folder.write_table("bench_train_loss", history_table(train_history), "style")
    write_bytes_atomic(plot_loss_png(train_history, "fast network training"),
                       out / "bench_train_loss.png")

    # 2. both methods at each size, same content, same S, same loss
    rows: list[dict[str, object]] = []
    panels = []
    for size in args.sizes:
        content = to_tensor(load_image(args.content, (size, size))).to(device)
        baseline = loss.evaluate(content, content)["total"]
        sync(device)
        start = time.perf_counter()
        x_opt, history = optimise(loss, content, OptimiseConfig(steps=args.opt_steps))
        sync(device)
        opt_s = time.perf_counter() - start
        opt_loss = loss.evaluate(x_opt, content)
        y_fast, fast_s = time_fast(net, content, device, args.repeats)
        fast_loss = loss.evaluate(y_fast, content)
        # how many optimisation steps (and seconds) reach the fast network's loss
        reach = next((r for r in history if r["total"] <= fast_loss["total"]), None)
        row = {
            "size": size, "device": device_name, "opt_steps": len(history),
            "opt_s": opt_s, "fast_s": fast_s, "speedup": opt_s / fast_s,
            "loss_content_image": baseline, "opt_loss": opt_loss["total"],
            "opt_content": opt_loss["content"], "opt_style": opt_loss["style"],
            "fast_loss": fast_loss["total"], "fast_content": fast_loss["content"],
            "fast_style": fast_loss["style"], "loss_ratio": fast_loss["total"] / opt_loss["total"],
            "opt_steps_to_fast_loss": reach["step"] if reach else None,
            "opt_s_to_fast_loss": reach["seconds"] if reach else None,
        }
        rows.append(row)
        print(f"{size}x{size}: optimisation {opt_s:.1f}s ({len(history)} L-BFGS evals) loss "
              f"{opt_loss['total']:.3f} | fast {fast_s * 1000:.1f}ms loss {fast_loss['total']:.3f}"
              f" | speedup {opt_s / fast_s:.0f}x, loss ratio {row['loss_ratio']:.2f} "
              f"(content image itself: {baseline:.3f}; optimisation matches the fast loss after "
              f"{row['opt_steps_to_fast_loss']} evals)")
        folder.write_table(f"bench_opt_loss_{size}", history_table(history), "style")
        write_bytes_atomic(plot_loss_png(history, f"optimisation {size}px"),
                           out / f"bench_opt_loss_{size}.png")
        panel = side_by_side([to_uint8(content), to_uint8(style), to_uint8(x_opt),
                              to_uint8(y_fast)], height=min(size, 256))
        panels.append(panel)
        write_bytes_atomic(to_png_bytes(panel), out / f"side_by_side_{size}.png")

    folder.write_table("bench", pa.Table.from_pylist(rows), "style")
    manifest = {"topic": "style", "command": "bench", "rows": rows, "train_s": train_s,
                "train": train_cfg.model_dump(), "net": net_cfg.model_dump(),
                "total_train_steps": done_steps + args.train_steps,
                "resumed_from": str(args.resume) if args.resume else None,
                "loss": loss_cfg.model_dump(), "threads": threads,
                "train_images": [p.name for p in train_paths]}
    final = folder.publish(manifest, update_latest=False)
    print(json.dumps(rows, indent=1, default=str))
    for row in rows:
        ok = row["speedup"] >= 100 and row["loss_ratio"] <= 1.5  # type: ignore[operator]
        print(f"{row['size']}px: speedup {row['speedup']:.0f}x (target >= 100), loss ratio "
              f"{row['loss_ratio']:.2f} (target <= 1.5): {'PASS' if ok else 'MISS'}")
    if args.docs and panels:  # small copy for the docs: 200 px high, 256-colour palette
        small = Image.fromarray(side_by_side([panels[0]], height=200))
        buffer = io.BytesIO()
        small.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
        write_bytes_atomic(buffer.getvalue(), REPO / "docs" / "style_side_by_side.png")
    print(f"results in {final}")


if __name__ == "__main__":
    main()
