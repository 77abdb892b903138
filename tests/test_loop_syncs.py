"""Off the CPU the training loop makes no host-synchronising call per step (benchmarks/README.md, "Host syncs").

A GPU stalls whenever Python reads a tensor's value (.item(), .tolist(), .cpu(), bool(t), float(t), ...):
the host waits for every queued kernel. train_sae reads values only on log, check, resample and
checkpoint steps. This test runs the loop on the CPU while it believes it is on an accelerator (the
device-dependent choices, the check cadence and the step saelib.fast picks, are set as off the CPU),
counts every such call made from saelib's own code (the loop, the model, the hooks, the tracker; not
saelib/fast, whose steps see the tensors' real device), and asserts there is none in an ordinary step.
"""
import sys
from pathlib import Path

import pytest
import torch

import saelib.training.loop as loop
from saelib import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from saelib.training.config import TrainConfig

SAELIB = str(Path(loop.__file__).resolve().parents[1])
# saelib/fast's steps decide their own syncs from the real device of their tensors (here the CPU, where
# TopK's dead-latent bound is read every step; on a GPU only once per dead_tokens tokens): not counted here
FAST = str(Path(SAELIB) / "fast")
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
TOTAL, LOG_EVERY, RESAMPLE_EVERY = 30, 10, 15


def _models():
    torch.manual_seed(0)
    relu = ReLUSAE(16, 48)
    with torch.no_grad():
        relu.b_enc[:8] = -100.0                        # dead features, so resampling really happens
    return {"relu": relu, "gated": GatedSAE(16, 48), "jumprelu": JumpReLUSAE(16, 48, theta_init=0.05),
            "topk": TopKSAE(16, 48, k=4, aux_k=8)}


@pytest.mark.parametrize("kind", ["relu", "gated", "jumprelu", "topk"])
def test_no_host_sync_in_an_ordinary_step_off_the_cpu(kind, monkeypatch):
    sae = _models()[kind]
    calls = []                                   # one entry per sync call from saelib

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(SAELIB) and not caller.startswith(FAST):
                calls.append(f"{name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)
        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))

    # the device-dependent choices as on a GPU: checks every log_every steps, the step saelib.fast picks there
    choose = loop.training_loss
    step_starts = []

    def chooser(model, device):
        fn = choose(model, torch.device("cuda"))

        def loss(x, sparsity_coeff):
            step_starts.append(len(calls))
            return fn(x, sparsity_coeff)
        return loss
    monkeypatch.setattr(loop, "host_sync_is_free", lambda device: False)
    monkeypatch.setattr(loop, "training_loss", chooser)

    cfg = TrainConfig(total_steps=TOTAL, batch_size=64, lr=3e-3, sparsity_coeff=None if kind == "topk" else 3e-3,
                      log_every=LOG_EVERY, resample=True if kind == "relu" else None,
                      resample_every=RESAMPLE_EVERY, resample_pool=128, progress=False, device="cpu")
    g = torch.Generator().manual_seed(0)
    hist = loop.train_sae(sae, torch.randn(512, 16, generator=g), cfg)
    assert len(step_starts) == TOTAL
    step_starts.append(len(calls))
    per_step = {s: calls[step_starts[s - 1]:step_starts[s]] for s in range(1, TOTAL + 1)}
    # syncs happen only on steps that log, or resample (and checkpoint: none here)
    allowed = {s for s in per_step if s % LOG_EVERY == 0 or s % RESAMPLE_EVERY == 0}
    offending = {s: c for s, c in per_step.items() if c and s not in allowed}
    assert not offending, f"host syncs in ordinary steps: {offending}"
    assert any(per_step[s] for s in allowed)                       # the counting itself works
    if kind == "relu":
        assert sum(h["n_resampled"] for h in hist) > 0


def test_cpu_checks_every_step():
    """On the CPU a sync costs nothing, so the NaN/inf guard runs every step (tests/test_train.py relies on it)."""
    assert loop.host_sync_is_free(torch.device("cpu"))
    assert not loop.host_sync_is_free(torch.device("meta"))
