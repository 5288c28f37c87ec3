"""RealNVP normalising flow (Dinh et al. 2017): affine couplings trained by exact likelihood."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from models.generative.training import (
    Quality,
    TrainConfig,
    evaluate_in_batches,
    load_module_state,
    module_state,
)
from models.torch_utils import load_checkpoint

LOG_2PI = math.log(2 * math.pi)


class RealNVPConfig(TrainConfig):
    """RealNVP architecture, data choice and training knobs; the defaults are the real-run size."""

    dataset: Literal["mnist", "moons"] = "mnist"
    """Dequantised MNIST (784-D, checkerboard masks) or 2-D two moons (alternating halves)."""
    n_couplings: PositiveInt = 8
    """Affine coupling layers; consecutive layers use complementary masks."""
    hidden_size: PositiveInt = 1024
    """Width of each coupling's s/t network."""
    n_hidden: PositiveInt = 1
    """Hidden layers in each coupling's s/t network."""
    actnorm: bool = True
    """Put an ActNorm layer (Glow's per-dimension affine, data-initialised) before each coupling."""
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    """MNIST logit preprocessing y = logit(alpha + (1 - 2 alpha) u), as in the RealNVP paper."""
    clip_grad_norm: PositiveFloat = 100.0
    """Clip the gradient's global norm to this (guards the first steps of a deep flow)."""
    moons_n: PositiveInt = 4000
    """Number of two-moons points generated (train plus validation) when dataset = moons."""
    moons_noise: float = Field(0.05, ge=0.0)
    """Standard deviation of the Gaussian noise added to the two moons."""
    epochs: PositiveInt = 20
    """Passes over the training split."""
    learning_rate: float = Field(1e-4, gt=0.0)
    """Adam step size (1e-3 made the MNIST flow's loss jump; 1e-4 as in the MAF paper)."""
    batch_size: PositiveInt = 64
    """Images (or points) per optimiser step."""


def checkerboard_mask(height: int, width: int, parity: int) -> Tensor:
    """Flat (height*width,) 0/1 mask: 1 where (row + col) % 2 == parity (the kept half)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((rows + cols) % 2 == parity).float().flatten()


def halves_mask(dim: int, parity: int) -> Tensor:
    """(dim,) 0/1 mask keeping the first half of the coordinates (parity 0) or the second (1)."""
    mask = torch.zeros(dim)
    half = max(1, dim // 2)
    if parity == 0:
        mask[:half] = 1
    else:
        mask[half:] = 1
    return mask


class AffineCoupling(nn.Module):
    """z = m*x + (1-m)*(x*exp(s(m*x)) + t(m*x)); log|det J| = sum over the (1-m) dims of s."""

    def __init__(self, mask: Tensor, hidden_size: int, n_hidden: int) -> None:
        super().__init__()
        dim = mask.numel()
        self.register_buffer("mask", mask)
        layers: list[nn.Module] = [nn.Linear(dim, hidden_size), nn.ReLU()]
        for _ in range(n_hidden - 1):
            layers += [nn.Linear(hidden_size, hidden_size), nn.ReLU()]
        layers.append(nn.Linear(hidden_size, 2 * dim))
        self.net = nn.Sequential(*layers)
        # Start as the identity map: zero last layer gives s = t = 0.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        # s = scale * tanh(raw) keeps exp(s) bounded early on (the paper's tanh-scaled s).
        self.scale = nn.Parameter(torch.ones(dim))

    def _s_t(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        raw_s, t = self.net(kept).chunk(2, dim=1)
        free = 1 - self.mask
        return self.scale * torch.tanh(raw_s) * free, t * free  # each (B, D), zero on kept dims

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, D) and log|det dz/dx| (B,)."""
        s, t = self._s_t(x * self.mask)
        z = x * self.mask + (1 - self.mask) * (x * torch.exp(s) + t)
        return z, s.sum(dim=1)

    def inverse(self, z: Tensor) -> Tensor:
        """x = m*z + (1-m)*((z - t(m*z)) * exp(-s(m*z))): exact, since m*z = m*x."""
        s, t = self._s_t(z * self.mask)
        return z * self.mask + (1 - self.mask) * ((z - t) * torch.exp(-s))


class ActNorm(nn.Module):
    """z = (x + loc) * exp(log_scale) per dimension; log|det J| = sum(log_scale) (Glow, 2018).

    The first training batch sets loc and log_scale so that z has zero mean and unit variance
    per dimension (data-dependent initialisation); after that they are ordinary parameters.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, D) and log|det dz/dx| (B,)."""
        if self.training and not bool(self.initialised) and x.shape[0] > 1:
            with torch.no_grad():
                self.loc.copy_(-x.mean(dim=0))
                self.log_scale.copy_(-torch.log(x.std(dim=0) + 1e-6))
                self.initialised.fill_(True)
        z = (x + self.loc) * torch.exp(self.log_scale)
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """x = z * exp(-log_scale) - loc."""
        return z * torch.exp(-self.log_scale) - self.loc


class RealNVP(nn.Module):
    """A stack of affine couplings with alternating masks and a standard normal base density."""

    def __init__(self, config: RealNVPConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = 784 if config.dataset == "mnist" else 2
        masks = [checkerboard_mask(28, 28, i % 2) if config.dataset == "mnist"
                 else halves_mask(self.dim, i % 2) for i in range(config.n_couplings)]
        layers: list[nn.Module] = []
        for mask in masks:
            if config.actnorm:
                layers.append(ActNorm(self.dim))
            layers.append(AffineCoupling(mask, config.hidden_size, config.n_hidden))
        self.couplings = nn.ModuleList(layers)  # ActNorm and coupling layers, in order

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """f(x) = z (B, D) and log|det df/dx| (B,), summed over the couplings."""
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for coupling in self.couplings:
            x, ld = coupling(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        """f^{-1}(z), undoing the couplings in reverse order."""
        for coupling in reversed(self.couplings):
            z = coupling.inverse(z)
        return z

    def log_prob(self, x: Tensor) -> Tensor:
        """log p_x(x) (B,) = log N(f(x); 0, I) + log|det df/dx| (change of variables)."""
        z, logdet = self(x)
        return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=1) + logdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` draws x = f^{-1}(z), z ~ N(0, I), in the model's space (logit space for MNIST)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.dim, generator=generator, device="cpu").to(device)
        return self.inverse(z)


def dequantise(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """u = (x + v) / 256 with x the integer grey level and v ~ U[0, 1): a density on [0, 1)^D.

    `images` hold grey levels in [0, 1] (x / 255); they are mapped back to integers first.
    """
    levels = torch.round(images.flatten(1) * 255)
    noise = torch.rand(levels.shape, generator=generator, device="cpu").to(levels.device)
    return (levels + noise) / 256


def logit_transform(u: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """y = logit(alpha + (1 - 2 alpha) u) and log|det dy/du| (B,).

    dy/du = (1 - 2 alpha) / (p (1 - p)) with p = alpha + (1 - 2 alpha) u, per dimension.
    """
    p = alpha + (1 - 2 * alpha) * u
    y = torch.log(p) - torch.log1p(-p)
    logdet = (math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)).sum(dim=1)
    return y, logdet


def bits_per_dim(log_py: Tensor, logdet_pre: Tensor, dim: int) -> Tensor:
    """Bits per dimension of the 8-bit images (B,), from the flow's log density in logit space.

    log p(u) = log p(y) + log|dy/du| on [0, 1)^D; the discrete data's density on the 256-level
    grid is p(u) / 256^D, so NLL(x) <= -(log p(u) - D log 256) nats; divide by D ln 2.
    """
    log_pu = log_py + logdet_pre
    return -(log_pu - dim * math.log(256)) / (dim * math.log(2))


class RealNVPTrainer:
    """A RealNVP with its Adam optimiser, for MNIST (bits/dim) or two moons (NLL in nats)."""

    def __init__(self, config: RealNVPConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = RealNVP(config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.noise = torch.Generator().manual_seed(config.seed + 1)
        self.quality = (Quality("val_nll", "min", "validation NLL, nats per point")
                        if config.dataset == "moons" else
                        Quality("val_bpd", "min", "validation bits per dimension"))

    def _nll(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        if self.config.dataset == "moons":
            nll = -self.model.log_prob(batch)
            return {"loss": nll.mean(), "nll": nll.mean()}
        y, logdet_pre = logit_transform(dequantise(batch, generator), self.config.alpha)
        log_py = self.model.log_prob(y)
        bpd = bits_per_dim(log_py, logdet_pre, self.model.dim)
        # Minimising bits/dim is maximum likelihood (the Jacobian term has no parameters).
        return {"loss": bpd.mean(), "bpd": bpd.mean()}

    def train_step(self, batch: Tensor) -> dict[str, float]:
        """One Adam step on the negative log-likelihood of `batch`."""
        self.model.train()
        losses = self._nll(batch, self.noise)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.optimizer.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": float(norm)}

    @torch.no_grad()
    def evaluate(self, data: Tensor) -> dict[str, float]:
        """Validation bits/dim (MNIST, one fixed dequantisation draw) or NLL in nats (moons)."""
        self.model.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 2)

        def one(chunk: Tensor) -> dict[str, float]:
            return {k: float(v) for k, v in self._nll(chunk, generator).items()}

        return evaluate_in_batches(one, data, 4 * self.config.batch_size)

    def diagnostics(self, batch: Tensor) -> dict[str, float]:
        """Nothing beyond the loss and gradient norm."""
        return {}

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """`n` samples on the CPU: images (n, 1, 28, 28) in [0, 1] for MNIST, points (n, 2)."""
        self.model.eval()
        x = self.model.sample(n, torch.Generator().manual_seed(self.config.seed + 3))
        if self.config.dataset == "moons":
            return x.cpu()
        a = self.config.alpha
        u = ((torch.sigmoid(x) - a) / (1 - 2 * a)).clamp(0, 1)
        return u.view(n, 1, 28, 28).cpu()

    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser and dequantisation-noise generator state."""
        state = module_state({"flow": self.model}, {"adam": self.optimizer})
        state["noise"] = self.noise.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict` output."""
        load_module_state(state, {"flow": self.model}, {"adam": self.optimizer})
        if "noise" in state:
            self.noise.set_state(state["noise"].cpu())


def load_realnvp(path: Path, device: torch.device | str = "cpu") -> RealNVPTrainer:
    """Rebuild a trained RealNVP from its checkpoint alone (the config travels inside it)."""
    ckpt = load_checkpoint(path, device)
    trainer = RealNVPTrainer(RealNVPConfig.model_validate(ckpt["config"]), device)
    trainer.load_state_dict(ckpt["state"])
    trainer.model.eval()
    return trainer

