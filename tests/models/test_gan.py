"""GAN: shapes, losses, the vanishing saturating gradient under a near-perfect D, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from features.mnist import load_mnist
from models.generative.classifier import CONFIDENCE, load_judge
from models.generative.gan import (
    Discriminator,
    GANConfig,
    GANTrainer,
    Generator,
    discriminator_loss,
    generator_grad_norms,
    generator_loss,
    load_gan,
    to_unit,
    translate,
    upsample2,
)
from models.generative.training import FitState, checkpoint_payload
from models.torch_utils import save_checkpoint, set_threads
from tests.conftest import cuda_devices

set_threads(1)
# The classic unconditional GAN for the loss and gradient checks; CONDITIONAL is the default.
TINY = GANConfig(latent_size=8, width=8, batch_size=32, learning_rate=2e-3, conditional=False,
                 augment=False, label_smoothing=0.0, auxiliary_weight=0.0, quality_samples=50)
CONDITIONAL = TINY.model_copy(update={"conditional": True, "augment": True,
                                     "label_smoothing": 0.1})  # projection D only


def real_digits(n: int = 32) -> torch.Tensor:
    """The first `n` shipped MNIST digits as (n, 1, 28, 28) grey levels in [0, 1]."""
    images, _ = load_mnist()
    return torch.from_numpy(images[:n]).float().div(255).unsqueeze(1)


def real_labels(n: int = 32) -> torch.Tensor:
    """Their labels (n,)."""
    return torch.from_numpy(load_mnist()[1][:n])


def test_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    g, d = Generator(TINY), Discriminator(TINY)
    fake = g(torch.randn(5, 8))
    assert fake.shape == (5, 1, 28, 28) and fake.min() >= -1 and fake.max() <= 1
    assert d(fake).shape == (5,)
    samples = GANTrainer(TINY).sample(4)
    assert samples.shape == (4, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1


def test_losses_against_their_definitions() -> None:
    logits = torch.tensor([-3.0, 0.0, 2.0])
    d = torch.sigmoid(logits)
    assert torch.allclose(generator_loss(logits, "saturating"), torch.log(1 - d).mean())
    assert torch.allclose(generator_loss(logits, "non_saturating"), -torch.log(d).mean())
    real = torch.tensor([1.0, 4.0])
    expected = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - d).mean())
    assert torch.allclose(discriminator_loss(real, logits), expected)
    with pytest.raises(ValueError, match="minimax"):
        generator_loss(logits, "minimax")  # type: ignore[arg-type]


def test_saturating_gradient_vanishes_when_d_is_near_perfect() -> None:
    """Train only D against a fixed G until it separates real from fake, then compare."""
    torch.manual_seed(0)
    trainer = GANTrainer(TINY)
    g, d = trainer.generator, trainer.discriminator
    real = to_unit(real_digits(64))
    z = torch.randn(64, TINY.latent_size)
    with torch.no_grad():
        fake = g(z)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    before = generator_grad_norms(g, d, z)  # an untrained D is unsure
    for _ in range(100):
        loss = discriminator_loss(d(real), d(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        d_fake = torch.sigmoid(d(fake))
        accuracy = 0.5 * (float((d(real) > 0).float().mean())
                          + float((d_fake < 0.5).float().mean()))
    assert accuracy == 1.0 and float(d_fake.max()) < 0.01  # near-perfect D
    after = generator_grad_norms(g, d, z)
    print(f"D(G(z)) max {float(d_fake.max()):.2e}; before {before}; after {after}")
    # d/dlogit of log(1 - D) is -D(G(z)) ~ 0; of -log D it is -(1 - D(G(z))) ~ -1.
    assert after["g_grad_saturating"] < 0.02 * after["g_grad_non_saturating"]
    assert after["g_grad_non_saturating"] > 0.5 * before["g_grad_non_saturating"]
    assert before["g_grad_saturating"] > 0.3 * before["g_grad_non_saturating"]


def test_diagnostics_report_both_gradient_norms_and_d_accuracy() -> None:
    torch.manual_seed(0)
    out = GANTrainer(TINY).diagnostics(real_digits(16))
    assert set(out) == {"g_grad_non_saturating", "g_grad_saturating", "d_accuracy_eval",
                        "d_fake_mean"}
    assert out["g_grad_non_saturating"] > 0 and 0 <= out["d_accuracy_eval"] <= 1


@pytest.mark.parametrize("device", cuda_devices())
def test_discriminator_overfits_one_batch(device: str) -> None:
    torch.manual_seed(0)
    trainer = GANTrainer(TINY, device)
    real = to_unit(real_digits().to(device))
    with torch.no_grad():
        fake = trainer.generator(torch.randn(32, TINY.latent_size, device=device))
    losses = []
    for _ in range(40):
        loss = discriminator_loss(trainer.discriminator(real), trainer.discriminator(fake))
        trainer.opt_d.zero_grad()
        loss.backward()
        trainer.opt_d.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("device", cuda_devices())
def test_train_step_updates_both_players(device: str) -> None:
    torch.manual_seed(0)
    trainer = GANTrainer(TINY, device)
    g0 = [p.detach().clone() for p in trainer.generator.parameters()]
    d0 = [p.detach().clone() for p in trainer.discriminator.parameters()]
    out = trainer.train_step(real_digits().to(device))
    assert set(out) == {"loss", "loss_d", "d_accuracy"}
    for before, module in ((g0, trainer.generator), (d0, trainer.discriminator)):
        after = list(module.parameters())
        assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("kind", ["non_saturating", "saturating"])
def test_generator_learns_to_fool_a_fixed_discriminator(kind: str) -> None:
    torch.manual_seed(0)
    trainer = GANTrainer(TINY.model_copy(update={"generator_loss": kind}))
    z = torch.randn(32, TINY.latent_size)
    trainer.discriminator.requires_grad_(False)
    losses = []
    for _ in range(30):
        loss = generator_loss(trainer.discriminator(trainer.generator(z)), kind)
        trainer.opt_g.zero_grad()
        loss.backward()
        trainer.opt_g.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = GANTrainer(TINY)
    trainer.train_step(real_digits(8))
    path = save_checkpoint(tmp_path / "gan.pt", checkpoint_payload("gan", trainer, FitState()))
    loaded = load_gan(path)
    assert loaded.config == TINY
    trainer.generator.eval()
    z = torch.randn(3, TINY.latent_size)
    with torch.no_grad():
        assert torch.equal(loaded.generator(z), trainer.generator(z))


def test_config_rejects_unknown_loss() -> None:
    with pytest.raises(ValueError, match="generator_loss"):
        GANConfig(generator_loss="wasserstein")  # type: ignore[arg-type]


def test_defaults_are_the_conditional_spectral_norm_recipe() -> None:
    cfg = GANConfig()
    assert cfg.conditional and cfg.spectral_norm and cfg.augment and cfg.ema_decay > 0
    assert cfg.auxiliary_weight == 1.0 and cfg.label_smoothing == 0.1
    assert (cfg.learning_rate, cfg.beta1, cfg.generator_loss) == (2e-4, 0.5, "non_saturating")
    d = Discriminator(cfg)
    assert all(hasattr(m, "parametrizations") for m in d.body if isinstance(m, torch.nn.Conv2d))


def test_conditional_players_need_and_use_labels() -> None:
    torch.manual_seed(0)
    g, d = Generator(CONDITIONAL), Discriminator(CONDITIONAL)
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="labels"):
        g(z)
    a, b = g(z, torch.tensor([0, 1, 2, 3])), g(z, torch.tensor([4, 5, 6, 7]))
    assert a.shape == (4, 1, 28, 28) and not torch.allclose(a, b)  # the label changes the image
    assert not torch.allclose(d(a, torch.tensor([0, 1, 2, 3])), d(a, torch.tensor([9, 9, 9, 9])))
    trainer = GANTrainer(CONDITIONAL)
    with pytest.raises(ValueError, match="labels"):
        trainer.train_step(real_digits(8))
    out = trainer.train_step((real_digits(8), real_labels(8)))
    assert set(out) == {"loss", "loss_d", "d_accuracy"}
    images, labels = trainer.sample_labelled(12)
    assert images.shape == (12, 1, 28, 28) and labels is not None
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_label_smoothing_lowers_the_real_target() -> None:
    real, fake = torch.tensor([3.0, -1.0]), torch.tensor([0.5])
    d = torch.sigmoid(real)
    expected = -(0.9 * torch.log(d) + 0.1 * torch.log(1 - d)).mean() - torch.log(
        1 - torch.sigmoid(fake)).mean()
    assert torch.allclose(discriminator_loss(real, fake, 0.1), expected)


def test_upsample2_matches_nearest_upsampling() -> None:
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(upsample2(x), torch.nn.Upsample(scale_factor=2)(x))


def test_translate_shifts_each_image_and_passes_gradients() -> None:
    torch.manual_seed(0)
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    x.requires_grad_(True)
    y = translate(x, max_shift=2)
    assert y.shape == x.shape
    assert torch.allclose(y.detach().sum((1, 2, 3)), torch.full((16,), 64.0))  # shifted, kept
    assert not torch.equal(y.detach(), x.detach())
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_sample_quality_scores_real_digits_high_and_noise_low() -> None:
    judge = load_judge()
    digits, labels = real_digits(200), real_labels(200)
    real = judge.score(digits, labels)
    assert real["confident_share"] > 0.9 and real["label_agreement"] > 0.95
    noise = judge.score(torch.rand(200, 1, 28, 28))
    assert noise["confident_share"] < real["confident_share"]
    assert noise["feature_distance"] > 10 * real["feature_distance"]
    out = GANTrainer(CONDITIONAL).sample_quality(50)
    assert set(out) == {"confident_share", "mean_confidence", "feature_distance",
                        "label_agreement"}
    assert 0 <= out["confident_share"] <= 1 and CONFIDENCE == 0.9


def test_evaluate_reports_the_quality_metric() -> None:
    torch.manual_seed(0)
    trainer = GANTrainer(CONDITIONAL)
    out = trainer.evaluate((real_digits(16), real_labels(16)))
    assert {"loss", "loss_d", "d_accuracy", "confident_share", "feature_distance"} <= set(out)
    assert trainer.quality.metric == "val_confident_share" and trainer.quality.mode == "max"


def test_auxiliary_classifier_learns_real_digits() -> None:
    assert Discriminator(GANConfig(conditional=False)).classes is None  # no labels, no head
    torch.manual_seed(0)
    trainer = GANTrainer(CONDITIONAL.model_copy(update={"auxiliary_weight": 1.0,
                                                        "augment": False}))
    head = trainer.discriminator.classes
    assert head is not None and GANTrainer(CONDITIONAL).discriminator.classes is None
    digits, labels = real_digits(32), real_labels(32)

    def real_ce() -> float:
        with torch.no_grad():
            _, classes = trainer.discriminator.logits(to_unit(digits), labels)
        assert classes is not None and classes.shape == (32, 10)
        return float(torch.nn.functional.cross_entropy(classes, labels))

    before = real_ce()
    for _ in range(15):
        trainer.train_step((digits, labels))
    assert real_ce() < 0.5 * before  # D's auxiliary head learns the real digits' classes
