"""Neural style transfer: Gram/perceptual loss, per-image optimisation (Gatys) and a fast network.

Loss (lecture notes; Gatys, Ecker & Bethge 2016; Johnson, Alahi & Fei-Fei 2016), on the frozen
VGG-19 features A^l of `models.generative.vgg`, with N_l channels and M_l = H_l * W_l positions:

    L_content(C, X) = 1/(N_l M_l) * sum_ij (A^l_ij(C) - A^l_ij(X))^2           (one layer, relu3_1)
    G^l_ij(A)       = 1/(N_l M_l) * sum_k A^l_ik A^l_jk                          (Gram matrix)
    L_style(S, X)   = sum_l w_l * sum_ij (G^l_ij(S) - G^l_ij(X))^2               (relu1_1..relu3_1)
    L(C, S, X)      = alpha * L_content(C, X) + beta * L_style(S, X)

Both the content sum and the Gram matrix are divided by N_l M_l (the layer's size), so the terms,
and the weights alpha and beta, do not depend on the image size, and a network trained on 256 px
crops is judged by the same numbers at 512 px.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from torch import nn

from features.images import random_crops
from models.generative.vgg import LAYERS, VGGEncoder
from models.torch_utils import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

Layer = Literal["relu1_1", "relu2_1", "relu3_1"]
CHECKPOINT_KIND = "style-transform-net"


class StyleConfig(BaseModel):
    """The perceptual loss: which VGG layers, and the weights alpha, beta, w_l."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content_layer: Layer = "relu3_1"
    """VGG layer whose activations the content term compares (a deeper one keeps layout, not
    pixels)."""
    style_layers: tuple[Layer, ...] = ("relu1_1", "relu2_1", "relu3_1")
    """VGG layers whose Gram matrices the style term compares."""
    style_layer_weights: tuple[PositiveFloat, ...] = (1.0, 1.0, 1.0)
    """w_l, one per style layer."""
    content_weight: PositiveFloat = 1.0
    """alpha: weight of the content term."""
    style_weight: PositiveFloat = 10.0
    """beta: weight of the style term (Gram entries are ~1e-2, hence the larger number)."""

    @model_validator(mode="after")
    def _weights_match_layers(self) -> StyleConfig:
        if not self.style_layers:
            raise ValueError("style_layers must name at least one VGG layer")
        if len(self.style_layer_weights) != len(self.style_layers):
            raise ValueError(
                f"style_layer_weights has {len(self.style_layer_weights)} entries but "
                f"style_layers has {len(self.style_layers)}; give one weight per layer"
            )
        return self


class OptimiseConfig(BaseModel):
    """Per-image optimisation of the pixels of X (Gatys et al.)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: PositiveInt = 200
    """Optimiser iterations (one loss and gradient evaluation each)."""
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    """L-BFGS (Gatys' choice, fewer steps) or Adam."""
    learning_rate: PositiveFloat | None = None
    """Step size; None picks 1.0 for L-BFGS and 0.02 for Adam (pixels lie in [0, 1])."""
    init: Literal["content", "noise"] = "content"
    """Start X from the content image or from uniform noise."""
    seed: int = 0
    """Seed for the noise start."""
    log_every: PositiveInt = 50
    """Log the loss every this many steps."""


class TransformNetConfig(BaseModel):
    """The feed-forward transformation network a_theta (Johnson et al. 2016, instance norm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: PositiveInt = 16
    """Width of the first layer; the two downsampling layers use 2x and 4x this (16: 0.42 M
    parameters; on CPU it trained far faster per step and per second than 32, see docs)."""
    n_residual: int = Field(default=5, ge=0)
    """Residual blocks at 1/4 resolution."""


class FastTrainConfig(BaseModel):
    """Training of the transformation network for one fixed style."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: PositiveInt = 3000
    """Optimiser steps (one batch of random crops each); 3000 x 2 crops of 128 px take about
    22 CPU-minutes for the default network on one quiet core (0.44 CPU-s a step), and bring
    the loss at 256 px to 1.97x the optimisation's, from 2.50x after 900 (docs/style.md)."""
    batch_size: PositiveInt = 2
    """Crops per step."""
    crop_size: int = Field(default=128, ge=16)
    """Side of the square training crops, in pixels (128 keeps CPU training affordable; the
    network is fully convolutional and is applied at any size)."""
    style_size: int | None = Field(default=256, ge=16)
    """Long side of the style image S in pixels (None: `crop_size`). It fixes the pixel scale
    of the learned strokes; crops may be smaller than S since Gram matrices are size-normalised."""
    short_side: tuple[PositiveFloat, PositiveFloat] = (2.0, 2.5)
    """Before each crop its image is scaled so that its short side lies uniformly in this range,
    in multiples of `crop_size` (2-2.5 x 128 px: the scale of a 256 px image, the size the
    network is judged at)."""
    learning_rate: PositiveFloat = 1e-3
    """Adam step size (the peak, with `lr_schedule="cosine"`)."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """Constant, or cosine decay from `learning_rate` to 1% of it over `steps`."""
    seed: int = 0
    """Seed for initial weights and crops."""
    log_every: PositiveInt = 50
    """Log the loss every this many steps."""

    @model_validator(mode="after")
    def _short_side_ordered(self) -> FastTrainConfig:
        lo, hi = self.short_side
        if lo > hi or lo < 1.0:
            raise ValueError(f"short_side must be (lo, hi) with 1 <= lo <= hi, "
                             f"got {self.short_side}")
        return self


class LossTerms(NamedTuple):
    """Per-image loss terms, each (B,)."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrices F F^T / (C H W): channel correlations."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)  # (B, C, M)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def content_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x2 -> (B,): sum of squared differences divided by C H W."""
    return (a - b).pow(2).flatten(1).mean(1)


def style_loss(grams_x: Sequence[torch.Tensor], grams_s: Sequence[torch.Tensor],
               weights: Sequence[float]) -> torch.Tensor:
    """Sum over layers of w_l * ||G_l(X) - G_l(S)||_F^2 -> (B,); G_s may have batch 1."""
    terms = [w * (gx - gs).pow(2).sum((1, 2)) for gx, gs, w in zip(grams_x, grams_s, weights,
                                                                   strict=True)]
    return torch.stack(terms).sum(0)


class PerceptualLoss(nn.Module):
    """L(C, S, X) for one fixed style image S, whose Gram matrices are computed once."""

    def __init__(self, vgg: VGGEncoder, config: StyleConfig, style: torch.Tensor) -> None:
        super().__init__()
        self.vgg, self.config = vgg, config
        used = {config.content_layer, *config.style_layers}
        self.upto = max(used, key=LAYERS.index)
        with torch.no_grad():
            feats = vgg(style, upto=self.upto)
        for i, layer in enumerate(config.style_layers):
            self.register_buffer(f"style_gram_{i}", gram(feats[layer]))  # (1, C, C)

    @property
    def style_grams(self) -> list[torch.Tensor]:
        """Target Gram matrices, one (1, C, C) per style layer."""
        return [getattr(self, f"style_gram_{i}") for i in range(len(self.config.style_layers))]

    @torch.no_grad()
    def content_target(self, content: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) content images -> their (B, C, H', W') content-layer features."""
        return self.vgg(content, upto=self.config.content_layer)[self.config.content_layer]

    def forward(self, x: torch.Tensor, content_target: torch.Tensor) -> LossTerms:
        """Loss terms of images X (B, 3, H, W) against content features and the style."""
        c = self.config
        feats = self.vgg(x, upto=self.upto)
        lc = content_loss(feats[c.content_layer], content_target)
        ls = style_loss([gram(feats[layer]) for layer in c.style_layers], self.style_grams,
                        c.style_layer_weights)
        return LossTerms(c.content_weight * lc + c.style_weight * ls, lc, ls)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, content: torch.Tensor) -> dict[str, float]:
        """Batch-mean loss terms of images X (clamped to [0, 1]) for content images C."""
        terms = self(x.clamp(0, 1), self.content_target(content))
        return {name: float(value.mean()) for name, value in terms._asdict().items()}


class _Bar:
    """A tqdm bar (or nothing) that shows the latest loss; `update` advances it one step."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self.bar.update(1)


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[_Bar]:
    """One tqdm bar over `total` steps with ETA while log records print above it (if enabled)."""
    if not enabled:
        yield _Bar(None)
        return
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, desc=desc, unit="step",
                                       dynamic_ncols=True) as bar:
        yield _Bar(bar)


# ---------------------------------------------------------------- optimisation (Gatys)

History = list[dict[str, float]]
Callback = Callable[[dict[str, float]], None]


def _record(step: int, terms: LossTerms, start: float) -> dict[str, float]:
    terms = LossTerms(*(t.detach() for t in terms))
    return {"step": float(step), "total": float(terms.total.mean()),
            "content": float(terms.content.mean()), "style": float(terms.style.mean()),
            "seconds": time.perf_counter() - start}


def optimise(loss: PerceptualLoss, content: torch.Tensor, config: OptimiseConfig,
             callback: Callback | None = None, *,
             progress: bool = False) -> tuple[torch.Tensor, History]:
    """Minimise L(C, S, X) over the pixels of X; returns X clamped to [0, 1] and the loss per step.

    `content` is (1, 3, H, W) on the loss's device. A step is one loss-and-gradient evaluation,
    so L-BFGS and Adam runs of equal `steps` cost about the same. L-BFGS runs as one call over
    all steps and sees the loss of clamp(X, 0, 1) (clamping X itself mid-run would corrupt its
    curvature pairs); Adam clamps X to [0, 1] after every step. `progress` shows a tqdm bar
    with one tick per step.
    """
    target = loss.content_target(content)
    if config.init == "content":
        x = content.detach().clone()
    else:
        gen = torch.Generator().manual_seed(config.seed)
        x = torch.rand(content.shape, generator=gen).to(content.device)
    x.requires_grad_(True)
    lbfgs = config.optimizer == "lbfgs"
    opt: torch.optim.Optimizer
    if lbfgs:
        opt = torch.optim.LBFGS([x], lr=config.learning_rate or 1.0, max_iter=config.steps,
                                max_eval=config.steps, tolerance_grad=0.0, tolerance_change=0.0,
                                history_size=50, line_search_fn="strong_wolfe")
    else:
        opt = torch.optim.Adam([x], lr=config.learning_rate or 0.02)
    history: History = []
    start = time.perf_counter()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        terms = loss(x.clamp(0, 1) if lbfgs else x, target)
        total = terms.total.sum()
        if not torch.isfinite(total):
            raise FloatingPointError(f"style optimisation diverged at step {len(history) + 1}; "
                                     "lower --learning-rate or use adam")
        total.backward()
        record = _record(len(history) + 1, terms, start)
        history.append(record)
        if callback:
            callback(record)
        bar.update(record["total"])
        step = len(history)
        if step % config.log_every == 0 or step == config.steps:
            log.info("optimise step %d/%d loss %.4f (content %.4f, style %.4f)", step,
                     config.steps, record["total"], record["content"], record["style"])
        return total

    with progress_bar(config.steps, "style optimise", progress) as bar:
        if lbfgs:
            opt.step(closure)  # stops after `steps` evaluations
        else:
            for _ in range(config.steps):
                opt.step(closure)
                with torch.no_grad():
                    x.clamp_(0, 1)
    return x.detach().clamp(0, 1), history


# ---------------------------------------------------------------- fast network (Johnson)

class ConvNormReLU(nn.Sequential):
    """Reflection pad, conv, instance norm (affine), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c_in, c_out, kernel, stride),
                         nn.InstanceNorm2d(c_out, affine=True), nn.ReLU())


class ResidualBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))), same shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormReLU(channels, channels, 3),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.body(x)


class UpConv(nn.Sequential):
    """Nearest x2 upsampling then conv (avoids the checkerboard of transposed convs)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvNormReLU(c_in, c_out, 3))


class TransformNet(nn.Module):
    """a_theta: conv encoder (/4), residual blocks, upsampling decoder; any H, W in, same out.

    Johnson et al. 2016 with instance norm (Ulyanov et al. 2016) and resize-convolutions.
    """

    def __init__(self, config: TransformNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TransformNetConfig()
        c = config.channels
        self.encoder = nn.Sequential(ConvNormReLU(3, c, 9), ConvNormReLU(c, 2 * c, 3, stride=2),
                                     ConvNormReLU(2 * c, 4 * c, 3, stride=2))
        self.residual = nn.Sequential(*[ResidualBlock(4 * c) for _ in range(config.n_residual)])
        self.decoder = nn.Sequential(UpConv(4 * c, 2 * c), UpConv(2 * c, c),
                                     nn.ReflectionPad2d(4), nn.Conv2d(c, 3, 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) in (0, 1).

        A sigmoid bounds the output, so the loss is computed on exactly the image that is saved;
        measured on one 32 px batch it also trains faster than a raw output or an x + delta skip
        (loss 28 vs 64 and 66 after 60 Adam steps at lr 1e-3).
        """
        h, w = x.shape[-2:]
        ph, pw = -h % 4, -w % 4  # pad to a multiple of 4 so the two /2 steps round-trip
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        y = self.decoder(self.residual(self.encoder(x)))
        return torch.sigmoid(y[..., :h, :w])

    @torch.no_grad()
    def stylise(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass in eval mode."""
        return self.eval()(x)


def train_fast(net: TransformNet, loss: PerceptualLoss, images: Sequence[torch.Tensor],
               config: FastTrainConfig, callback: Callback | None = None, *,
               progress: bool = False) -> History:
    """Fit a_theta to minimise the mean of L(x, S, a_theta(x)) over random crops of `images`.

    `images` are (1, 3, H, W) CPU tensors in [0, 1]; crops move to the network's device.
    `progress` shows one tqdm bar over the steps (with ETA; log lines print above it).
    """
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=config.steps, eta_min=0.01 * config.learning_rate)
        if config.lr_schedule == "cosine" else None)
    net.train()
    history: History = []
    start = time.perf_counter()
    with progress_bar(config.steps, "style train", progress) as bar:
        for step in range(1, config.steps + 1):
            batch = random_crops(images, config.batch_size, config.crop_size, gen,
                                 config.short_side).to(device)
            lr = opt.param_groups[0]["lr"]  # the step size this step uses
            terms = train_step(net, loss, batch, opt)
            if sched is not None:
                sched.step()
            if not torch.isfinite(terms.total).all():
                raise FloatingPointError(f"training diverged at step {step}; "
                                         "lower --learning-rate")
            record = _record(step, terms, start) | {"lr": lr}
            history.append(record)
            if callback:
                callback(record)
            bar.update(record["total"])
            if step % config.log_every == 0 or step == config.steps:
                log.info("train step %d/%d loss %.4f (content %.4f, style %.4f)", step,
                         config.steps, record["total"], record["content"], record["style"])
    net.eval()
    return history


def train_step(net: TransformNet, loss: PerceptualLoss, batch: torch.Tensor,
               opt: torch.optim.Optimizer) -> LossTerms:
    """One Adam step on the batch-mean perceptual loss; returns the detached terms."""
    target = loss.content_target(batch)
    opt.zero_grad()
    terms = loss(net(batch), target)
    terms.total.mean().backward()
    opt.step()
    return LossTerms(*(t.detach() for t in terms))


def save_transform_net(path: Path, net: TransformNet, *, style_config: StyleConfig,
                       train_config: FastTrainConfig, style_image: torch.Tensor,
                       style_name: str, step: int) -> Path:
    """Checkpoint carrying the network config, loss config and the style it was trained for.

    `style_image` is (1, 3, H, W) in [0, 1]; it is stored as uint8.
    """
    payload = {
        "kind": CHECKPOINT_KIND,
        "config": net.config.model_dump(),
        "style_config": style_config.model_dump(),
        "train_config": train_config.model_dump(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "style_image": style_image[0].clamp(0, 1).mul(255).round().byte().cpu(),  # (3, H, W)
        "style_name": style_name,
        "step": step,
    }
    return save_checkpoint(Path(path), payload)


def load_transform_net(path: Path, device: torch.device | str = "cpu"
                       ) -> tuple[TransformNet, dict[str, Any]]:
    """Rebuild a TransformNet from its checkpoint; also return the metadata (configs, style)."""
    try:
        ckpt = load_checkpoint(Path(path), device)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a style transformation-network checkpoint "
                         f"({type(exc).__name__} on load); "
                         "pass a file from `recsys style train`") from exc
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
    if kind != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a style transformation-network checkpoint "
                         f"(kind {kind!r}); pass a file from `recsys style train`")
    net = TransformNet(TransformNetConfig.model_validate(ckpt["config"]))
    net.load_state_dict(ckpt["state_dict"])
    meta = {
        "style_config": StyleConfig.model_validate(ckpt["style_config"]),
        "train_config": FastTrainConfig.model_validate(ckpt["train_config"]),
        "style_image": ckpt["style_image"].float().div(255).unsqueeze(0),  # (1, 3, H, W)
        "style_name": ckpt["style_name"],
        "step": ckpt["step"],
    }
    return net.to(device).eval(), meta
