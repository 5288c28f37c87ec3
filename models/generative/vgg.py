"""Pretrained VGG-19 encoder up to relu3_1 (AdaIN's "normalised" weights) for perceptual losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from features.resources import data_path

VGG_WEIGHTS = data_path("vgg", "vgg19_normalised_to_relu3_1.npz")
LAYERS = ("relu1_1", "relu2_1", "relu3_1")
"""Feature maps the encoder returns, in depth order."""
CHANNELS = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256}
STRIDES = {"relu1_1": 1, "relu2_1": 2, "relu3_1": 4}


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3), nn.ReLU()]


def _pool() -> nn.Module:
    return nn.MaxPool2d(2, 2, ceil_mode=True)


def vgg_layers() -> nn.Sequential:
    """AdaIN's VGG-19 stack to relu3_1; the indices match the weight file's keys."""
    return nn.Sequential(
        nn.Conv2d(3, 3, 1),  # 0: RGB in [0, 1] -> caffe BGR x 255 minus mean
        *_conv(3, 64),  # 1-3: relu1_1
        *_conv(64, 64), _pool(),  # 4-7
        *_conv(64, 128),  # 8-10: relu2_1
        *_conv(128, 128), _pool(),  # 11-14
        *_conv(128, 256),  # 15-17: relu3_1
    )


class VGGEncoder(nn.Module):
    """Frozen VGG-19 slices returning relu1_1, relu2_1 and relu3_1 for an RGB batch in [0, 1].

    `pretrained=False` leaves random weights: only for shape tests, never for a loss.
    """

    def __init__(self, pretrained: bool = True, weights: Path | None = None) -> None:
        super().__init__()
        layers = vgg_layers()
        if pretrained:
            load_vgg_weights(layers, weights or VGG_WEIGHTS)
        self.slices = nn.ModuleList([layers[:4], layers[4:11], layers[11:18]])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, upto: str = "relu3_1") -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {layer: (B, C_l, ceil(H/s_l), ceil(W/s_l))} up to `upto`."""
        if upto not in LAYERS:
            raise ValueError(f"unknown VGG layer {upto!r}; choose one of {LAYERS}")
        out: dict[str, torch.Tensor] = {}
        for name, block in zip(LAYERS, self.slices, strict=True):
            x = block(x)
            out[name] = x
            if name == upto:
                break
        return out

    def train(self, mode: bool = True) -> VGGEncoder:
        """Stay in eval mode: the encoder is a fixed feature extractor."""
        return super().train(False)


def load_vgg_weights(layers: nn.Sequential, path: Path) -> None:
    """Copy `<index>_weight/_bias` arrays from the npz file into the matching conv layers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG weights {path} are missing; they ship in the repository under data/vgg/"
        )
    with np.load(path) as arrays:
        state = {key.replace("_", ".", 1): torch.from_numpy(arrays[key]) for key in arrays.files}
    missing, unexpected = layers.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the VGG stack (missing {missing}, "
                         f"unexpected {unexpected})")


def load_vgg(device: torch.device | str = "cpu", weights: Path | None = None) -> VGGEncoder:
    """The pretrained encoder on `device`, frozen and in eval mode."""
    return VGGEncoder(pretrained=True, weights=weights).to(device)
