"""Style transfer models: Gram oracle, losses, VGG weights, optimisation, fast net, checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from features.images import load_image, to_tensor
from models.generative.style import (
    FastTrainConfig,
    OptimiseConfig,
    PerceptualLoss,
    StyleConfig,
    TransformNet,
    TransformNetConfig,
    content_loss,
    gram,
    load_transform_net,
    optimise,
    save_transform_net,
    style_loss,
    train_fast,
    train_step,
)
from models.generative.vgg import CHANNELS, VGGEncoder, load_vgg, vgg_layers
from models.torch_utils import save_checkpoint, set_threads

set_threads(1)
REPO = Path(__file__).resolve().parents[2]
CAT = REPO / "features" / "data" / "images" / "content" / "chelsea.jpg"
STARRY = REPO / "features" / "data" / "images" / "style" / "starry_night.jpg"


@pytest.fixture(scope="module")
def vgg() -> VGGEncoder:
    return load_vgg("cpu")


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensor(load_image(CAT, (32, 32))), to_tensor(load_image(STARRY, 32))


def test_gram_matches_numpy_oracle(rng: np.random.Generator) -> None:
    feats = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    flat = feats.reshape(2, 5, 12)
    oracle = np.einsum("bik,bjk->bij", flat, flat) / (5 * 3 * 4)
    got = gram(torch.from_numpy(feats)).numpy()
    assert got.shape == (2, 5, 5)
    np.testing.assert_allclose(got, oracle, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, got.transpose(0, 2, 1), atol=1e-6)  # symmetric


def test_content_loss_is_mean_square_and_zero_for_identical(rng: np.random.Generator) -> None:
    a = torch.from_numpy(rng.normal(size=(2, 4, 3, 3)).astype(np.float32))
    assert torch.equal(content_loss(a, a), torch.zeros(2))
    b = a + 2.0
    np.testing.assert_allclose(content_loss(a, b).numpy(), [4.0, 4.0], rtol=1e-6)


def test_style_loss_oracle(rng: np.random.Generator) -> None:
    gx = [torch.from_numpy(rng.normal(size=(1, 3, 3)).astype(np.float32)) for _ in range(2)]
    gs = [torch.zeros(1, 3, 3), torch.ones(1, 3, 3)]
    want = 0.5 * (gx[0].numpy() ** 2).sum() + 2.0 * ((gx[1].numpy() - 1) ** 2).sum()
    np.testing.assert_allclose(float(style_loss(gx, gs, [0.5, 2.0])[0]), want, rtol=1e-5)


@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (17, 21)])
def test_vgg_shapes_random_weights(hw: tuple[int, int]) -> None:
    feats = VGGEncoder(pretrained=False)(torch.rand(2, 3, *hw))
    for i, (layer, channels) in enumerate(CHANNELS.items()):
        s = 2**i
        assert feats[layer].shape == (2, channels, -(-hw[0] // s), -(-hw[1] // s))


def test_vgg_weights_are_the_normalised_vgg(vgg: VGGEncoder,
                                            images: tuple[torch.Tensor, torch.Tensor]) -> None:
    # layer 0 maps RGB in [0, 1] to caffe BGR x 255 minus the ImageNet mean
    colour = vgg.slices[0][0]
    assert torch.allclose(colour.weight[:, :, 0, 0], 255 * torch.eye(3).flip(1))
    assert torch.allclose(colour.bias, torch.tensor([-103.939, -116.779, -123.68]))
    # "normalised": each filter's mean activation over natural images is about one
    feats = vgg(images[0])
    for layer in CHANNELS:
        assert 0.5 < float(feats[layer].mean()) < 2.0, layer
    assert not any(p.requires_grad for p in vgg.parameters())


def test_vgg_file_matches_shared_state_dict(shared_data: Path, vgg: VGGEncoder) -> None:
    state = torch.load(shared_data / "vgg" / "vgg_normalised_conv3_1.pth", weights_only=True)
    reference = vgg_layers()
    reference.load_state_dict(state)
    x = torch.rand(1, 3, 24, 24)
    assert torch.allclose(reference(x), vgg(x)["relu3_1"], atol=1e-5)


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="one weight per layer"):
        StyleConfig(style_layers=("relu1_1",), style_layer_weights=(1.0, 2.0))
    with pytest.raises(ValidationError):
        StyleConfig(stlye_weight=3.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        OptimiseConfig(optimizer="sgd")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="short_side"):
        FastTrainConfig(short_side=(2.0, 1.5))
    with pytest.raises(ValidationError):
        FastTrainConfig(lr_schedule="step")  # type: ignore[arg-type]


def test_loss_terms(vgg: VGGEncoder, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    content, style = images
    loss = PerceptualLoss(vgg, StyleConfig(content_weight=2.0, style_weight=3.0), style)
    terms = loss(content, loss.content_target(content))
    assert float(terms.content[0]) == 0.0 and float(terms.style[0]) > 0
    assert torch.allclose(terms.total, 3.0 * terms.style)
    self_terms = loss(style, loss.content_target(style))  # X = S: style term vanishes
    assert float(self_terms.style[0]) < 1e-8


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_one_optimisation_step_lowers_the_loss(vgg: VGGEncoder, optimizer: str,
                                               images: tuple[torch.Tensor, torch.Tensor]) -> None:
    content, style = images
    loss = PerceptualLoss(vgg, StyleConfig(), style)
    before = loss.evaluate(content, content)["total"]
    steps = 3 if optimizer == "lbfgs" else 1  # L-BFGS: 1st evaluation is at the start point
    x, history = optimise(loss, content, OptimiseConfig(steps=steps, optimizer=optimizer))
    assert history[0]["total"] == pytest.approx(before, rel=1e-4)
    assert loss.evaluate(x, content)["total"] < before
    assert x.min() >= 0 and x.max() <= 1 and x.shape == content.shape


def test_noise_start_is_seeded(vgg: VGGEncoder, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    content, style = images
    loss = PerceptualLoss(vgg, StyleConfig(), style)
    cfg = OptimiseConfig(steps=2, optimizer="adam", init="noise", seed=3)
    a, _ = optimise(loss, content, cfg)
    b, _ = optimise(loss, content, cfg)
    assert torch.equal(a, b) and not torch.allclose(a, content, atol=0.1)


@pytest.mark.parametrize("hw", [(16, 16), (17, 23), (33, 47), (64, 50)])
def test_transform_net_preserves_size(hw: tuple[int, int]) -> None:
    net = TransformNet(TransformNetConfig(channels=4, n_residual=1))
    assert net(torch.rand(2, 3, *hw)).shape == (2, 3, *hw)
    y = net.stylise(torch.rand(1, 3, *hw))
    assert y.shape == (1, 3, *hw) and y.min() >= 0 and y.max() <= 1


def test_fast_network_fits_one_batch(vgg: VGGEncoder,
                                     images: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    content, style = images
    loss = PerceptualLoss(vgg, StyleConfig(), style)
    net = TransformNet(TransformNetConfig(channels=8, n_residual=1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = [float(train_step(net, loss, content, opt).total.mean()) for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip(tmp_path: Path, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    net = TransformNet(TransformNetConfig(channels=4, n_residual=2))
    style_cfg, train_cfg = StyleConfig(style_weight=7.0), FastTrainConfig(steps=3, crop_size=32)
    path = save_transform_net(tmp_path / "net.pt", net, style_config=style_cfg,
                              train_config=train_cfg, style_image=images[1],
                              style_name="starry_night.jpg", step=3)
    loaded, meta = load_transform_net(path)
    x = torch.rand(1, 3, 20, 28)
    assert torch.equal(loaded(x), net.eval()(x))
    assert loaded.config == net.config
    assert meta["style_config"] == style_cfg and meta["train_config"] == train_cfg
    assert meta["style_name"] == "starry_night.jpg" and meta["step"] == 3
    assert torch.allclose(meta["style_image"], images[1], atol=1 / 255)


def test_loading_a_foreign_checkpoint_fails_clearly(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "other.pt", {"config": {}, "state_dict": {}})
    with pytest.raises(ValueError, match="recsys style train"):
        load_transform_net(path)
    with pytest.raises(FileNotFoundError):
        load_transform_net(tmp_path / "missing.pt")


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_train_fast_schedule_and_progress_bar(vgg: VGGEncoder, schedule: str,
                                              images: tuple[torch.Tensor, torch.Tensor],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    content, style = images
    loss = PerceptualLoss(vgg, StyleConfig(), style)
    net = TransformNet(TransformNetConfig(channels=4, n_residual=1))
    cfg = FastTrainConfig(steps=4, batch_size=1, crop_size=16, style_size=32,
                          short_side=(1.0, 1.5), learning_rate=1e-2,
                          lr_schedule=schedule)  # type: ignore[arg-type]
    seen: list[float] = []
    history = train_fast(net, loss, [content], cfg, lambda r: seen.append(r["step"]),
                         progress=True)
    assert seen == [1.0, 2.0, 3.0, 4.0] and len(history) == 4
    lrs = [r["lr"] for r in history]
    if schedule == "constant":
        assert lrs == [1e-2] * 4
    else:  # cosine from the peak towards 1% of it
        assert lrs[0] == pytest.approx(1e-2) and lrs == sorted(lrs, reverse=True)
        assert lrs[-1] == pytest.approx(1e-4 + (1e-2 - 1e-4) * (1 + np.cos(np.pi * 3 / 4)) / 2)
    assert "style train" in capsys.readouterr().err  # the tqdm bar


def test_optimise_progress_bar_ticks_per_step(vgg: VGGEncoder,
                                              images: tuple[torch.Tensor, torch.Tensor],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    content, style = images
    loss = PerceptualLoss(vgg, StyleConfig(), style)
    _, history = optimise(loss, content, OptimiseConfig(steps=3, optimizer="adam"),
                          progress=True)
    assert len(history) == 3
    err = capsys.readouterr().err
    assert "style optimise" in err and "3/3" in err
