"""RealNVP: exact inverse, log-det vs the autograd Jacobian, preprocessing Jacobian, overfit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.autograd.functional import jacobian

from features.mnist import two_moons
from models.generative.realnvp import (
    ActNorm,
    AffineCoupling,
    RealNVP,
    RealNVPConfig,
    RealNVPTrainer,
    bits_per_dim,
    checkerboard_mask,
    dequantise,
    halves_mask,
    load_realnvp,
    logit_transform,
)
from models.generative.training import FitState, checkpoint_payload, train_steps
from models.torch_utils import save_checkpoint, set_threads
from tests.conftest import cuda_devices

set_threads(1)
MOONS = RealNVPConfig(dataset="moons", n_couplings=6, hidden_size=32, learning_rate=3e-3)
MNIST = RealNVPConfig(dataset="mnist", n_couplings=2, hidden_size=16, n_hidden=1)


def perturbed(model: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """The flows start as the identity (zeroed last layers); shake every weight so tests bite.

    Returned in eval mode, so ActNorm keeps these weights instead of initialising from data.
    """
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def test_masks_alternate_and_cover_every_dimension() -> None:
    a, b = checkerboard_mask(28, 28, 0), checkerboard_mask(28, 28, 1)
    assert a.shape == (784,) and torch.equal(a + b, torch.ones(784)) and a.sum() == 392
    assert a.view(28, 28)[0, 0] == 1 and a.view(28, 28)[0, 1] == 0 and a.view(28, 28)[1, 0] == 0
    assert torch.equal(halves_mask(2, 0), torch.tensor([1.0, 0.0]))
    assert torch.equal(halves_mask(2, 0) + halves_mask(2, 1), torch.ones(2))


@pytest.mark.parametrize("config", [MOONS, MNIST], ids=["moons", "mnist"])
@torch.no_grad()
def test_inverse_of_forward_is_identity(config: RealNVPConfig) -> None:
    torch.manual_seed(0)
    flow = perturbed(RealNVP(config), scale=0.05)  # float32, weights of a trained flow's size
    x = torch.randn(64, flow.dim) * 2
    z, _ = flow(x)
    assert float((z - x).abs().max()) > 0.1  # the flow really moves points
    assert float((flow.inverse(z) - x).abs().max()) < 1e-5
    assert float((flow(flow.inverse(x))[0] - x).abs().max()) < 1e-5


@pytest.mark.parametrize("config", [MOONS, MNIST], ids=["moons", "mnist"])
@torch.no_grad()
def test_inverse_is_exact_up_to_rounding_for_wild_weights(config: RealNVPConfig) -> None:
    torch.manual_seed(0)
    flow = perturbed(RealNVP(config), scale=0.3).double()
    x = torch.randn(64, flow.dim, dtype=torch.float64) * 2
    z, _ = flow(x)
    assert float((z - x).abs().max()) > 10
    assert float((flow.inverse(z) - x).abs().max()) < 1e-10


def test_coupling_keeps_masked_half_and_log_det_is_sum_of_s() -> None:
    torch.manual_seed(0)
    coupling = perturbed(AffineCoupling(halves_mask(6, 0), hidden_size=8, n_hidden=2)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    z, logdet = coupling(x)
    assert torch.equal(z[:, :3], x[:, :3])  # z_{1:d} = x_{1:d}
    s, t = coupling._s_t(x * coupling.mask)
    assert torch.allclose(z[:, 3:], x[:, 3:] * torch.exp(s[:, 3:]) + t[:, 3:])
    assert torch.allclose(logdet, s[:, 3:].sum(dim=1))


@pytest.mark.parametrize("config", [MOONS, MNIST], ids=["moons", "mnist"])
def test_log_det_equals_log_abs_det_of_autograd_jacobian(config: RealNVPConfig) -> None:
    torch.manual_seed(0)
    flow = perturbed(RealNVP(config)).double()
    for x in torch.randn(2, flow.dim, dtype=torch.float64):
        _, logdet = flow(x[None])
        jac = jacobian(lambda v: flow(v[None])[0][0], x)  # (D, D)
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        assert torch.allclose(logdet[0], logabsdet, atol=1e-8), (float(logdet), float(logabsdet))


def test_logit_preprocessing_log_det_matches_autograd() -> None:
    u = torch.rand(3, 5, dtype=torch.float64)
    _, logdet = logit_transform(u, alpha=0.05)
    for row, ld in zip(u, logdet, strict=True):
        jac = jacobian(lambda v: logit_transform(v[None], 0.05)[0][0], row)
        assert torch.allclose(ld, torch.linalg.slogdet(jac)[1])


def test_bits_per_dim_of_the_uniform_density_is_eight() -> None:
    # If p(u) = 1 on [0, 1)^D then each 8-bit pixel costs exactly 8 bits.
    u = torch.rand(4, 784, dtype=torch.float64)
    _, logdet_pre = logit_transform(u, 0.05)
    log_py = -logdet_pre  # p_y(y) = p_u(u) / |dy/du| with p_u = 1
    assert torch.allclose(bits_per_dim(log_py, logdet_pre, 784), torch.full((4,), 8.0,
                                                                           dtype=torch.float64))


def test_dequantise_stays_inside_each_level_bin() -> None:
    levels = torch.arange(256, dtype=torch.float32).repeat(4, 1)[:, :196].reshape(4, 1, 14, 14)
    u = dequantise(levels / 255, torch.Generator().manual_seed(0))
    bins = levels.flatten(1)
    assert torch.all(u * 256 >= bins) and torch.all(u * 256 < bins + 1)


def test_log_prob_is_a_density_on_the_plane() -> None:
    # Integrate exp(log p) over a grid covering the mass: a normalised density sums to ~1.
    torch.manual_seed(0)
    flow = perturbed(RealNVP(MOONS), scale=0.1).double()
    grid = torch.linspace(-10, 10, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    cell = float(grid[1] - grid[0]) ** 2
    assert abs(float(p.sum()) * cell - 1.0) < 0.02


@pytest.mark.parametrize("device", cuda_devices())
def test_overfits_one_batch_of_moons(device: str) -> None:
    torch.manual_seed(0)
    trainer = RealNVPTrainer(MOONS, device)
    batch = torch.from_numpy(two_moons(128, noise=0.05, seed=0)).to(device)
    losses = train_steps(trainer, batch, steps=150)
    gaussian = torch.distributions.MultivariateNormal(batch.mean(0).cpu().double(),
                                                      torch.cov(batch.T.cpu()).double())
    # Better than the best single Gaussian on the same points: it learned the two arcs.
    assert losses[-1] < float(-gaussian.log_prob(batch.cpu().double()).mean()) - 0.3
    assert losses[-1] < losses[0] - 1.0


def test_overfits_one_batch_of_mnist_in_bits_per_dim() -> None:
    torch.manual_seed(0)
    trainer = RealNVPTrainer(MNIST.model_copy(update={"learning_rate": 3e-3}))
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(16, 1, 28, 28, generator=g) < 0.2).float()
    losses = train_steps(trainer, batch, steps=40)
    assert losses[-1] < losses[0] - 1.0
    assert not math.isnan(losses[-1])


def test_samples_and_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = RealNVPTrainer(MNIST)
    perturbed(trainer.model, 0.05)
    images = trainer.sample(3)
    assert images.shape == (3, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    path = save_checkpoint(tmp_path / "flow.pt", checkpoint_payload("realnvp", trainer, FitState()))
    loaded = load_realnvp(path)
    assert loaded.config == MNIST
    x = torch.randn(2, 784)
    with torch.no_grad():
        assert torch.equal(loaded.model.log_prob(x), trainer.model.log_prob(x))


def test_actnorm_initialises_from_the_first_training_batch() -> None:
    layer = ActNorm(3)
    x = torch.randn(500, 3) * torch.tensor([0.01, 1.0, 50.0]) + torch.tensor([-3.0, 0.0, 7.0])
    z, logdet = layer(x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(3), atol=1e-3)
    assert torch.allclose(logdet, torch.full((500,), float(layer.log_scale.detach().sum())))
    again, _ = layer(x * 2)  # later batches do not re-initialise
    assert torch.allclose(again, (x * 2 + layer.loc) * layer.log_scale.exp())
    assert float((layer.inverse(z) - x).abs().max().detach()) < 1e-4 * float(x.abs().max())


def test_quality_metric_is_bits_per_dim_or_moons_nll() -> None:
    assert RealNVPTrainer(MNIST).quality.metric == "val_bpd"
    assert RealNVPTrainer(MOONS).quality.metric == "val_nll"
    assert RealNVPTrainer(MNIST).quality.mode == "min"
