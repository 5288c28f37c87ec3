"""VAE: shapes, reparameterisation gradients, closed-form KL, one-batch overfit, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models.generative.training import FitState, checkpoint_payload, train_steps
from models.generative.vae import (
    VAE,
    VAEConfig,
    VAETrainer,
    kl_to_standard_normal,
    load_vae,
    reparameterise,
    vae_loss,
)
from models.torch_utils import save_checkpoint, set_threads
from tests.conftest import cuda_devices

set_threads(1)
TINY = VAEConfig(latent_size=4, hidden_sizes=(32,), batch_size=16, learning_rate=3e-3)


def mnist_like_batch(n: int = 16) -> torch.Tensor:
    """Blobby binary-ish images (n, 1, 28, 28): learnable structure, unlike uniform noise."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randint(6, 22, (n, 2), generator=g)
    rows, cols = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    d2 = ((rows[None] - centres[:, 0, None, None]) ** 2
          + (cols[None] - centres[:, 1, None, None]) ** 2)  # (n, 28, 28)
    return (d2 < 25).float().unsqueeze(1)


def test_shapes() -> None:
    torch.manual_seed(0)
    model = VAE(TINY)
    logits, mu, logvar = model(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 784) and mu.shape == (5, 4) and logvar.shape == (5, 4)
    assert VAETrainer(TINY).sample(3).shape == (3, 1, 28, 28)


def test_reparameterisation_sends_gradients_to_mu_and_sigma() -> None:
    mu = torch.tensor([[0.5, -1.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, 0.4]], requires_grad=True)
    eps = torch.tensor([[1.5, -2.0]])
    z = reparameterise(mu, logvar, eps)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(1, 2))
    # dz/dlogvar = 0.5 * exp(0.5 logvar) * eps
    assert torch.allclose(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)
    assert logvar.grad.abs().min() > 0


def test_reparameterised_draws_have_the_right_moments() -> None:
    torch.manual_seed(0)
    mu, logvar = torch.full((200_000, 1), 2.0), torch.full((200_000, 1), math.log(9.0))
    z = reparameterise(mu, logvar)
    assert abs(float(z.mean()) - 2.0) < 0.03 and abs(float(z.std()) - 3.0) < 0.03


def test_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 3), torch.randn(6, 3)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=1)
    assert torch.allclose(kl_to_standard_normal(mu, logvar), expected, atol=1e-5)


def test_loss_is_recon_plus_kl_in_nats_per_image() -> None:
    torch.manual_seed(0)
    x = mnist_like_batch(4)
    with torch.no_grad():
        logits, mu, logvar = VAE(TINY)(x)
        out = vae_loss(logits, x, mu, logvar)
    assert torch.isclose(out["loss"], out["recon"] + out["kl"])
    # Untrained decoder: logits near 0, so recon ~ 784 * log 2 nats per image.
    assert 400 < float(out["recon"]) < 700


@pytest.mark.parametrize("device", cuda_devices())
def test_overfits_one_batch(device: str) -> None:
    torch.manual_seed(0)
    trainer = VAETrainer(TINY, device)
    losses = train_steps(trainer, mnist_like_batch().to(device), steps=60)
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = VAETrainer(TINY)
    train_steps(trainer, mnist_like_batch(), steps=3)
    path = save_checkpoint(tmp_path / "vae.pt",
                           checkpoint_payload("vae", trainer, FitState(epoch=1, step=3)))
    loaded = load_vae(path)  # config comes from the checkpoint alone
    assert loaded.config == TINY
    x = mnist_like_batch(2)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(trainer.model.encode(x)[0], loaded.model.encode(x)[0])
        z = torch.ones(1, 4)
        assert torch.equal(trainer.model.decode(z), loaded.model.decode(z))


def test_config_rejects_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValueError, match="latent_sise"):
        VAEConfig(latent_sise=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        TINY.latent_size = 3  # type: ignore[misc]
    assert "dimension of the latent" in (VAEConfig.model_fields["latent_size"].description or "")


def test_quality_metric_is_the_validation_negative_elbo() -> None:
    trainer = VAETrainer(TINY)
    assert (trainer.quality.metric, trainer.quality.mode) == ("val_loss", "min")
    assert trainer.quality.better(1.0, 2.0) and not trainer.quality.better(2.0, 1.0)
    assert trainer.quality.better(5.0, None) and not trainer.quality.better(math.nan, None)
