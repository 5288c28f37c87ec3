"""Shipped MNIST digit classifier that judges generated digits: confidence and feature distance."""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from features.mnist import load_mnist, split_indices
from features.resources import data_path
from models.torch_utils import load_checkpoint, save_checkpoint, seed_everything, set_threads

log = logging.getLogger(__name__)

WEIGHTS = data_path("classifier", "digit_cnn.pt")
"""Made by `python -m models.generative.classifier` (see the README beside them): trained once on
the flows' training split (seed 0, 8,000 digits), never on validation or generated digits."""
CONFIDENCE = 0.9
"""A generated digit counts as confident when the classifier's top softmax exceeds this."""
FEATURE_SIZE = 128


class DigitClassifier(nn.Module):
    """Images (B, 1, 28, 28) in [0, 1] -> 10 logits; two conv+pool blocks, a 128-unit layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, FEATURE_SIZE), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_SIZE, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, 10)."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class DigitJudge:
    """The frozen classifier plus the real validation digits' feature statistics."""

    classifier: DigitClassifier
    real_mean: Tensor
    real_cov: Tensor

    @torch.no_grad()
    def score(self, images: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Confident share, mean top probability and Fréchet feature distance of `images`.

        `images` (N, 1, 28, 28) in [0, 1], any device. The feature distance is FID's formula on
        the classifier's 128-d penultimate features against the shipped validation digits.
        With `labels` (N,) the share classified as their label (`label_agreement`) too.
        """
        device = next(self.classifier.parameters()).device
        logits, feats = [], []
        for chunk in images.to(device).split(500):
            f = self.classifier.features(chunk)
            feats.append(f)
            logits.append(self.classifier.head(f))
        top, predicted = torch.cat(logits).softmax(1).max(1)
        feats_all = torch.cat(feats).double()
        out = {"confident_share": float((top > CONFIDENCE).float().mean()),
               "mean_confidence": float(top.mean()),
               "feature_distance": frechet_distance(feats_all, self.real_mean, self.real_cov)}
        if labels is not None:
            out["label_agreement"] = float((predicted.cpu() == labels.cpu()).float().mean())
        return out


def frechet_distance(feats: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) to a Gaussian."""
    mu = feats.mean(0)
    sigma = torch.cov(feats.T)
    vals, vecs = torch.linalg.eigh(sigma)
    root = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T  # S1^1/2
    cross = torch.linalg.eigvalsh(root @ cov.to(root) @ root).clamp(min=0).sqrt().sum()
    dist = (mu - mean.to(mu)).pow(2).sum() + sigma.trace() + cov.to(root).trace() - 2 * cross
    return float(dist.clamp(min=0))


def digit_split(seed: int = 0, val_fraction: float = 0.2,
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train images, train labels, validation images, validation labels (the flows' split)."""
    images, labels = load_mnist()
    split = split_indices(len(images), val_fraction=val_fraction, seed=seed)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    tr, va = torch.from_numpy(split.train), torch.from_numpy(split.validation)
    return x[tr], y[tr], x[va], y[va]


def shift(batch: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Translate each image by up to `max_shift` pixels in each direction (zero fill)."""
    n = len(batch)
    padded = F.pad(batch, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = torch.arange(28)[None, :] + offsets[:, :1]  # (n, 28)
    cols = torch.arange(28)[None, :] + offsets[:, 1:]
    idx = torch.arange(n)[:, None, None]
    return padded[idx, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train_classifier(epochs: int = 12, seed: int = 0, batch_size: int = 64,
                     ) -> tuple[DigitClassifier, dict[str, float]]:
    """Train on the training split with random shifts; return it and its validation figures."""
    xt, yt, xv, yv = digit_split(seed)
    seed_everything(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(xt) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(batch_size):
            loss = F.cross_entropy(model(shift(xt[idx], g)), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean())
        log.info("classifier epoch %d/%d: validation accuracy %.4f", epoch + 1, epochs, acc)
    model.eval()
    with torch.no_grad():
        probs = model(xv).softmax(1)
    figures = {"val_accuracy": float((probs.argmax(1) == yv).float().mean()),
               "val_confident_share": float((probs.max(1).values > CONFIDENCE).float().mean())}
    return model, figures


def save_classifier(model: DigitClassifier, figures: dict[str, float], path: Path) -> Path:
    """Write the weights (float32) and how they were made."""
    payload = {"model": "digit_cnn", "state": model.state_dict(), "figures": figures,
               "made_by": "python -m models.generative.classifier"}
    return save_checkpoint(path, payload)


@lru_cache(maxsize=4)
def load_judge(device: str = "cpu", path: Path = WEIGHTS) -> DigitJudge:
    """The shipped classifier (frozen, eval mode) with the validation digits' feature statistics."""
    ckpt = load_checkpoint(path, device)
    model = DigitClassifier().to(device)
    model.load_state_dict(ckpt["state"])
    model.eval().requires_grad_(False)
    _, _, xv, _ = digit_split()
    with torch.no_grad():
        feats = model.features(xv.to(device)).double()
    return DigitJudge(model, feats.mean(0), torch.cov(feats.T))


def main() -> None:
    """Retrain the shipped classifier and overwrite its weights (deterministic on the CPU)."""
    parser = argparse.ArgumentParser(description="Train the shipped MNIST digit classifier.")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--output", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads()
    model, figures = train_classifier(args.epochs)
    save_classifier(model, figures, args.output)
    print(f"wrote {args.output}: {figures}")


if __name__ == "__main__":
    main()
