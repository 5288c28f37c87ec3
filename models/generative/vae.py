"""Variational autoencoder (Kingma & Welling 2014): Gaussian encoder, Bernoulli decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor, nn

from models.generative.training import (
    Quality,
    TrainConfig,
    evaluate_in_batches,
    load_module_state,
    module_state,
)
from models.torch_utils import load_checkpoint

IMAGE_SIZE = 28 * 28


class VAEConfig(TrainConfig):
    """VAE architecture plus training knobs; the defaults are the real-run size."""

    latent_size: PositiveInt = 20
    """d, the dimension of the latent normal."""
    hidden_sizes: tuple[PositiveInt, ...] = (1024,)
    """Encoder hidden widths; the decoder mirrors them. (400,) is the classic VAE."""


class VAE(nn.Module):
    """MLP encoder x -> (mu, log sigma^2) and MLP decoder z -> Bernoulli logits over 784 pixels."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _mlp([IMAGE_SIZE, *config.hidden_sizes])
        self.to_stats = nn.Linear(config.hidden_sizes[-1], 2 * config.latent_size)
        self.decoder = nn.Sequential(
            _mlp([config.latent_size, *reversed(config.hidden_sizes)]),
            nn.Linear(config.hidden_sizes[0], IMAGE_SIZE),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance, each (B, d), of q(z | x) for images x (B, ...) in [0, 1]."""
        mu, logvar = self.to_stats(self.encoder(x.flatten(1))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli logits (B, 784) of p(x | z)."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits (B, 784), mu (B, d), logvar (B, d) for one reparameterised draw per image."""
        mu, logvar = self.encode(x)
        return self.decode(reparameterise(mu, logvar)), mu, logvar


def reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): the draw is differentiable in mu and sigma."""
    eps = torch.randn_like(mu) if eps is None else eps
    return mu + torch.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per row (B,), closed form: -1/2 sum(1 + log s2 - mu2 - s2)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def vae_loss(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> dict[str, Tensor]:
    """Negative ELBO in nats per image = reconstruction (Bernoulli NLL) + KL, batch means.

    `x` holds grey levels in [0, 1] used as Bernoulli targets (as in the PyTorch examples VAE).
    """
    recon = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(dim=1)
    kl = kl_to_standard_normal(mu, logvar)
    return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean()}


class VAETrainer:
    """A VAE with its Adam optimiser: one step, evaluation, samples, reconstructions, state."""

    quality = Quality("val_loss", "min", "validation negative ELBO, nats per image")

    def __init__(self, config: VAEConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = VAE(config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)

    def train_step(self, batch: Tensor) -> dict[str, float]:
        """One Adam step on the negative ELBO of `batch` (B, 1, 28, 28) in [0, 1]."""
        self.model.train()
        losses = _loss_of(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def evaluate(self, data: Tensor) -> dict[str, float]:
        """Negative ELBO (one z draw per image), reconstruction and KL in nats per image."""
        self.model.eval()

        def one(chunk: Tensor) -> dict[str, float]:
            return {k: float(v) for k, v in _loss_of(self.model, chunk).items()}

        return evaluate_in_batches(one, data, 4 * self.config.batch_size)

    def diagnostics(self, batch: Tensor) -> dict[str, float]:
        """Nothing beyond the loss terms."""
        return {}

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """`n` images (n, 1, 28, 28): decoder means sigma(logits) for z ~ N(0, I)."""
        self.model.eval()
        z = torch.randn(n, self.config.latent_size, device=self.device)
        return torch.sigmoid(self.model.decode(z)).view(n, 1, 28, 28).cpu()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means for the encoder means of `x` (B, 1, 28, 28), on the CPU."""
        self.model.eval()
        mu, _ = self.model.encode(x.to(self.device))
        return torch.sigmoid(self.model.decode(mu)).view(-1, 1, 28, 28).cpu()

    def state_dict(self) -> dict[str, Any]:
        """Model and optimiser state."""
        return module_state({"vae": self.model}, {"adam": self.optimizer})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict` output."""
        load_module_state(state, {"vae": self.model}, {"adam": self.optimizer})


def _loss_of(model: VAE, batch: Tensor) -> dict[str, Tensor]:
    logits, mu, logvar = model(batch)
    return vae_loss(logits, batch, mu, logvar)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


def load_vae(path: Path, device: torch.device | str = "cpu") -> VAETrainer:
    """Rebuild a trained VAE from its checkpoint alone (the config travels inside it)."""
    ckpt = load_checkpoint(path, device)
    trainer = VAETrainer(VAEConfig.model_validate(ckpt["config"]), device)
    trainer.load_state_dict(ckpt["state"])
    trainer.model.eval()
    return trainer
