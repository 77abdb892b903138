"""Watch a JumpReLU SAE's thresholds and kernel windows *during* training, without touching the loop.

train_sae pulls one batch before every step, so a batch source that wraps the real one sees the SAE
between steps and can measure it on the batch it is about to train on:

    batches = ThresholdMonitor(site.train_batches(cfg.batch_size, seed), sae, every=10,
                               batch_size=cfg.batch_size, seed=cfg.seed)
    train_sae(sae, batches, cfg)
    batches.records     # one dict every `every` steps: step, threshold quantiles, window fractions, l0

Measurements are taken under no_grad on the served batch (the SAE's state before that step's update).
"""
from __future__ import annotations

import torch

from saelib.models.kernels import fraction_in_window
from saelib.training.batches import as_batch_source
from saelib.validation import check_positive

QUANTILES = (0.1, 0.5, 0.9)


@torch.no_grad()
def jumprelu_snapshot(sae, x: torch.Tensor) -> dict:
    """Thresholds, bandwidths and how many pre-activations of x [rows, d_in] fall in each feature's kernel
    window |z - theta| < support * eps (kernels.fraction_in_window: one bandwidth for the Gaussian kernels).
    On a training batch, window_fraction * batch_size is the mean number of pre-activations per feature that
    give its threshold a gradient in that step."""
    z = sae.pre_activations(x.to(sae.W_enc.device))                        # [batch, d_sae]
    theta, eps = sae.threshold, sae.bandwidths                              # [d_sae], [d_sae]
    in_window = fraction_in_window(z, theta, eps, sae.kernel) * z.shape[0]  # [d_sae] counts in x
    q = torch.tensor(QUANTILES, dtype=theta.dtype, device=theta.device)
    record = {f"theta_q{int(100 * p)}": v for p, v in zip(QUANTILES, torch.quantile(theta, q).tolist(), strict=True)}
    record.update({
        "log_theta_mean": float(sae.log_threshold.mean()),
        "bandwidth_median": float(eps.median()),
        "window_fraction": float(in_window.sum() / z.numel()),             # over all (token, feature) pairs
        "window_count_median": float(in_window.median()),                  # per feature, over the rows of x
        "features_with_empty_window": float((in_window < 0.5).float().mean()),
        "l0": float((z > theta).sum(-1).float().mean()),
    })
    return record


class ThresholdMonitor:
    """A batch source (next_batch/state_dict/load_state_dict) that records jumprelu_snapshot every `every` steps."""

    def __init__(self, batches, sae, every: int = 10, *, batch_size: int, seed: int = 0):
        check_positive("every", every, integer=True)
        if getattr(sae, "architecture", None) != "jumprelu":
            raise ValueError(f"sae must be a JumpReLUSAE, got {type(sae).__name__}")
        self.source = as_batch_source(batches, batch_size, seed)
        self.sae, self.every = sae, every
        self.step = 0                       # batches served so far = steps taken before this batch
        self.records: list[dict] = []

    def next_batch(self) -> torch.Tensor:
        x = self.source.next_batch()
        if self.step % self.every == 0:
            self.records.append({"step": self.step, **jumprelu_snapshot(self.sae, x)})
        self.step += 1
        return x

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)
