"""Quality benchmark of the generative models on the shipped MNIST (and two moons), vs references.

    python bench/generative.py                      # all three, real-run configs
    python bench/generative.py --only vae --epochs 10 --device cpu

- VAE: validation negative ELBO (nats/image) of VAEConfig() next to the classic 784-400-20 VAE
  of the PyTorch examples, trained the same way (same split, epochs, batch size, Adam 1e-3).
- RealNVP: validation bits/dim on dequantised MNIST, test NLL on two moons, inverse error.
- GAN: share of generated digits that the shipped digit classifier (models/generative/classifier.py,
  trained once on the real training split) labels with confidence > 0.9, next to the same share
  for real validation digits (the reference), plus a Fréchet distance on its features.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.generative.classifier import WEIGHTS, digit_split, load_judge  # noqa: E402
from models.generative.gan import GANConfig, GANTrainer  # noqa: E402
from models.generative.realnvp import RealNVPConfig  # noqa: E402
from models.generative.training import TrainConfig, evaluate_in_batches, fit  # noqa: E402
from models.generative.vae import VAEConfig  # noqa: E402
from models.torch_utils import pick_device, seed_everything, set_threads  # noqa: E402
from pipelines.addons.generative import load_data, load_trained, make_config, train_model  # noqa: E402

log = logging.getLogger("bench.generative")


class ReferenceVAE(nn.Module):
    """The PyTorch examples VAE (examples/vae/main.py), verbatim apart from names."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def reference_loss(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """The examples' loss: BCE summed over pixels and batch + KLD (we divide by the batch)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / len(x)


class ReferenceTrainer:
    """Adapts ReferenceVAE to the fit loop so both VAEs see identical batches and epochs."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.model = ReferenceVAE().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)

    def train_step(self, batch: Tensor) -> dict[str, float]:
        self.model.train()
        loss = self._loss(batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def _loss(self, batch: Tensor) -> Tensor:
        recon, mu, logvar = self.model(batch)
        return reference_loss(recon, batch, mu, logvar)

    @torch.no_grad()
    def evaluate(self, data: Tensor) -> dict[str, float]:
        self.model.eval()
        return evaluate_in_batches(lambda c: {"loss": float(self._loss(c))}, data, 512)

    def diagnostics(self, batch: Tensor) -> dict[str, float]:
        return {}

    def sample(self, n: int) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def bench_vae(device: torch.device, epochs: int, root: Path) -> None:
    started = time.perf_counter()
    ours = train_model("vae", make_config("vae", {"epochs": epochs}), device=device, root=root)
    ours_s = time.perf_counter() - started
    ref_cfg = VAEConfig(epochs=epochs)  # same split, batch size, learning rate, seed
    train, val = (t.to(device) for t in load_data(ref_cfg))
    seed_everything(ref_cfg.seed)
    ref = ReferenceTrainer(ref_cfg, device)
    started = time.perf_counter()
    ref_state = fit(ref, train, val, label="reference-vae")
    ref_s = time.perf_counter() - started
    ours_nelbo = ours.final["val_loss"]
    ref_nelbo = ref_state.epoch_rows[-1]["val_loss"]
    print(f"\n[vae] {epochs} epochs, {len(train)} train / {len(val)} validation images, {device}")
    arch = make_config("vae").model_dump(include={"hidden_sizes", "latent_size"})
    print(f"  ours {arch}: val -ELBO {ours_nelbo:.2f} nats/image "
          f"(recon {ours.final['val_recon']:.2f} + KL {ours.final['val_kl']:.2f}), {ours_s:.0f}s")
    print(f"  reference 784-400-20 (PyTorch examples): val -ELBO {ref_nelbo:.2f} nats/image, "
          f"{ref_s:.0f}s")
    print(f"  ratio ours/reference = {ours_nelbo / ref_nelbo:.4f} (lower is better), "
          f"difference {ref_nelbo - ours_nelbo:+.2f} nats in our favour")
    for row_o, row_r in zip(ours.epoch_rows, ref_state.epoch_rows, strict=True):
        print(f"  epoch {int(row_o['epoch']):2d}: ours {row_o['val_loss']:.2f}  "
              f"reference {row_r['val_loss']:.2f}")


def bench_realnvp(device: torch.device, epochs: int | None, root: Path) -> None:
    over = {"epochs": epochs} if epochs else {}
    started = time.perf_counter()
    mnist = train_model("realnvp", make_config("realnvp", over), device=device, root=root)
    mnist_s = time.perf_counter() - started
    trainer = load_trained(mnist.checkpoint, device)
    cfg = trainer.config
    assert isinstance(cfg, RealNVPConfig)
    _, val = load_data(cfg)
    from models.generative.realnvp import dequantise, logit_transform

    with torch.no_grad():
        y, _ = logit_transform(dequantise(val[:256].to(device)), cfg.alpha)
        z, _ = trainer.model(y)  # type: ignore[attr-defined]
        err = float((trainer.model.inverse(z) - y).abs().max())  # type: ignore[attr-defined]
    print(f"\n[realnvp/mnist] {cfg.epochs} epochs, {cfg.n_couplings} couplings x "
          f"{cfg.hidden_size} hidden, {device}: val bits/dim {mnist.final['val_bpd']:.3f} "
          f"(train {mnist.final['train_bpd']:.3f}), {mnist_s:.0f}s; "
          f"max |inverse(forward(y)) - y| = {err:.2e}")
    for row in mnist.epoch_rows:
        print(f"  epoch {int(row['epoch']):2d}: val bpd {row['val_bpd']:.3f}")
    moons_over = {"dataset": "moons", "epochs": 200, "batch_size": 256, "hidden_size": 128,
                  "n_couplings": 8, "learning_rate": 1e-3, "log_every": 1000}
    started = time.perf_counter()
    moons = train_model("realnvp", make_config("realnvp", moons_over), device=device, root=root)
    print(f"[realnvp/moons] {moons_over}: test NLL {moons.final['val_nll']:.3f} nats "
          f"(train {moons.final['train_nll']:.3f}), {time.perf_counter() - started:.0f}s; "
          f"a single Gaussian fitted to the same data scores {gaussian_nll(moons_over):.3f}")


def gaussian_nll(over: dict[str, Any]) -> float:
    """Test NLL of a full-covariance Gaussian fitted to the moons training split (a reference)."""
    train, val = load_data(make_config("realnvp", over))
    mean, cov = train.mean(0), torch.cov(train.T)
    dist = torch.distributions.MultivariateNormal(mean.double(), cov.double())
    return float(-dist.log_prob(val.double()).mean())


def bench_gan(device: torch.device, epochs: int | None, root: Path,
              saturating_epochs: int, run: Path | None = None) -> None:
    judge = load_judge(str(device))
    xt, _, xv, yv = digit_split()
    real = judge.score(xv, yv)
    train_fd = judge.score(xt[: len(xv)])["feature_distance"]
    print(f"\n[gan] shipped classifier ({WEIGHTS.name}): validation accuracy "
          f"{real['label_agreement']:.4f}; real validation digits with confidence > 0.9: "
          f"{real['confident_share']:.3f} (the reference); feature distance of {len(xv)} real "
          f"training digits to the validation digits: {train_fd:.2f}")
    if run is not None:  # judge a published run instead of training one
        report_gan(run, device, real["confident_share"])
        return
    runs = [{"epochs": epochs} if epochs else {}]
    if saturating_epochs:
        runs.append({"epochs": saturating_epochs, "generator_loss": "saturating",
                     "log_every": 25})
    for over in runs:
        started = time.perf_counter()
        cpu_started = time.process_time()
        gan = train_model("gan", make_config("gan", over), device=device, root=root)
        print(f"[gan] trained in {time.perf_counter() - started:.0f}s wall, "
              f"{time.process_time() - cpu_started:.0f} CPU s "
              f"({torch.get_num_threads()} thread(s)) on {device}")
        report_gan(gan.folder, device, real["confident_share"])


def report_gan(folder: Path, device: torch.device, real_share: float) -> None:
    """Per-epoch quality of a published GAN run, then its last and best checkpoints judged."""
    import json

    import pyarrow.parquet as pq

    manifest = json.loads((folder.parents[1] / "manifest.json").read_text())
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    cfg = load_trained(folder / "checkpoint.pt", device).config
    assert isinstance(cfg, GANConfig)
    changed = {k: v for k, v in cfg.model_dump().items() if GANConfig().model_dump()[k] != v}
    print(f"[gan] {folder}: {cfg.epochs} epochs, {cfg.generator_loss} loss, "
          f"config changes from the defaults: {changed or 'none'}; samples {folder}/samples.png")
    cum = 0.0
    print("  epoch  confident  label agree  feature dist  cumulative train CPU s")
    for row in rows:
        cum += row.get("train_cpu_seconds", float("nan"))
        print(f"  {int(row['epoch']):5d}  {row['val_confident_share']:9.3f}  "
              f"{row.get('val_label_agreement', float('nan')):11.3f}  "
              f"{row['val_feature_distance']:12.2f}  {cum:8.0f}")
    best_epoch = manifest["quality"]["best_epoch"]
    for which, name, epoch in (("last", "checkpoint.pt", cfg.epochs),
                               ("best", "best.pt", best_epoch)):
        if not (folder / name).is_file():
            continue
        trainer = load_trained(folder / name, device)
        assert isinstance(trainer, GANTrainer)
        q = trainer.sample_quality(2000, seed=123)  # fresh noise, not the per-epoch z
        print(f"  {which} checkpoint (epoch {epoch}): {q['confident_share']:.3f} of 2000 "
              f"generated digits with confidence > 0.9 (ratio to real "
              f"{q['confident_share'] / real_share:.3f}); label agreement "
              f"{q.get('label_agreement', float('nan')):.3f}; mean top probability "
              f"{q['mean_confidence']:.3f}; feature distance {q['feature_distance']:.2f}")
    if (folder / "steps.parquet").is_file():
        print_gradient_log(folder)


def print_gradient_log(folder: Path, rows: int = 12) -> None:
    """A dozen rows of the step log: D's accuracy, D(G(z)) and G's gradient norm per loss."""
    import pyarrow.parquet as pq

    steps = pq.read_table(folder / "steps.parquet").to_pylist()
    print("   step  D acc  D(G(z))  |grad G| non-sat  |grad G| sat  sat/non-sat")
    for row in steps[:: max(1, len(steps) // rows)]:
        ns, sat = row["g_grad_non_saturating"], row["g_grad_saturating"]
        print(f"  {int(row['step']):5d}  {row['d_accuracy_eval']:.3f}  {row['d_fake_mean']:.4f}"
              f"  {ns:15.4f}  {sat:12.4f}  {sat / max(ns, 1e-12):11.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="vae,realnvp,gan")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    parser.add_argument("--vae-epochs", type=int, default=10)
    parser.add_argument("--gan-saturating-epochs", type=int, default=3,
                        help="also train this many epochs with the saturating loss (0: skip)")
    parser.add_argument("--output", type=Path, default=None, help="keep runs here (default tmp)")
    parser.add_argument("--gan-run", type=Path, default=None,
                        help="judge this published runs/<id>/generative/gan folder, no training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads()
    device = pick_device(args.device)
    root = args.output or Path(tempfile.mkdtemp(prefix="bench-generative-"))
    print(f"outputs under {root}; torch threads {torch.get_num_threads()}")
    which = set(args.only.split(","))
    if "vae" in which:
        bench_vae(device, args.epochs or args.vae_epochs, root)
    if "realnvp" in which:
        bench_realnvp(device, args.epochs, root)
    if "gan" in which:
        bench_gan(device, args.epochs, root, args.gan_saturating_epochs, args.gan_run)


if __name__ == "__main__":
    main()
