"""The training loop: config validation, schedules, batching, determinism, exact resume, NaN guards."""
import math
import re

import pytest
import torch

from saelib import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from saelib.training.batches import TensorBatches
from saelib.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from saelib.training.loop import NonFiniteError, TrainConfig, train_sae
from saelib.training.schedules import lr_multiplier, sparsity_coeff_at

D_IN, D_SAE = 16, 48


def _data(n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g)


def _cfg(**kw):
    base = dict(total_steps=40, batch_size=64, lr=3e-3, sparsity_coeff=3e-3, log_every=10, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _make(kind, seed=0, n_dead=0):
    """A small SAE of a family; the first n_dead features are killed (encoder bias -100) and the next
    n_dead fire rarely (bias -3: a few times per resampling window), so which are dead depends on
    exactly which steps the dead-feature tracker has seen."""
    torch.manual_seed(seed)
    sae = {"relu": lambda: ReLUSAE(D_IN, D_SAE),
            "april": lambda: ReLUSAE(D_IN, D_SAE, variant="april_update"),
            "gated": lambda: GatedSAE(D_IN, D_SAE),
            "jumprelu": lambda: JumpReLUSAE(D_IN, D_SAE, bandwidth=0.05, theta_init=0.05),
            "topk": lambda: TopKSAE(D_IN, D_SAE, k=4, aux_k=8)}[kind]()
    with torch.no_grad():
        (sae.b_gate if kind == "gated" else sae.b_enc)[:n_dead] = -100.0
        (sae.b_gate if kind == "gated" else sae.b_enc)[n_dead:2 * n_dead] = -3.0
    return sae


def _state(sae):
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def _assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs (max abs diff {(a[k].float() - b[k].float()).abs().max()})"


class Crash(Exception):
    pass


def _crash_on_call(monkeypatch, sae, n):
    """Make the loss function train_sae chooses for `sae` raise on its n-th call (as if the process died
    during step n). It wraps the step the loop really takes (saelib.fast.training_loss), so the run up to
    the crash is the same computation as an uninterrupted one."""
    import saelib.training.loop as loop

    choose, calls = loop.training_loss, [0]

    def chooser(model, device):
        fn = choose(model, device)
        if model is not sae:
            return fn

        def loss(x, sparsity_coeff):
            calls[0] += 1
            if calls[0] == n:
                raise Crash(f"simulated crash in step {n}")
            return fn(x, sparsity_coeff)
        return loss
    monkeypatch.setattr(loop, "training_loss", chooser)


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("kw, name", [
    (dict(total_steps=None), "total_steps"),
    (dict(total_tokens=1000), "total_tokens"),           # both given
    (dict(total_steps=0), "total_steps"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(adam_betas=(0.9,)), "adam_betas"),
    (dict(adam_betas=(0.9, 1.0)), "adam_betas[1]"),
    (dict(lr_decay_frac=1.5), "lr_decay_frac"),
    (dict(sparsity_coeff=-0.1), "sparsity_coeff"),
    (dict(sparsity_warmup_steps=5, sparsity_warmup_frac=0.1), "sparsity_warmup_steps"),
    (dict(grad_clip_norm=0.0), "grad_clip_norm"),
    (dict(resample="yes"), "resample"),
    (dict(resample_every=10, resample_window=20), "resample_window"),
    (dict(device="tpu"), "device"),
    (dict(precision="fp16"), "precision"),
    (dict(log_every=0), "log_every"),
    (dict(seed=-1), "seed"),
    (dict(checkpoint_dir=3), "checkpoint_dir"),
])
def test_invalid_config_names_the_parameter(kw, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        _cfg(**kw)


def test_total_tokens_sets_the_number_of_steps():
    cfg = TrainConfig(total_tokens=1000, batch_size=64, sparsity_coeff=0.0)
    assert cfg.n_steps == math.ceil(1000 / 64)


def test_sparsity_coeff_required_except_for_topk():
    with pytest.raises(ValueError, match="sparsity_coeff"):
        train_sae(_make("relu"), _data(), _cfg(sparsity_coeff=None, total_steps=2))
    hist = train_sae(_make("topk"), _data(), _cfg(sparsity_coeff=None, total_steps=2))
    assert hist[-1]["sparsity_coeff"] == 0.0


# ----------------------------------------------------------------------------- schedules

def test_lr_schedule_warmup_decay_and_rewarm_after_resample():
    total = 100
    m = [lr_multiplier(t, total, warmup_steps=10, decay_steps=20) for t in range(total)]
    assert m[0] == pytest.approx(0.1) and m[9] == 1.0 and m[50] == 1.0
    assert m[80] == 1.0 and m[81] == pytest.approx(19 / 20) and m[99] == pytest.approx(1 / 20)
    assert all(a >= b for a, b in zip(m[80:], m[81:], strict=False))                 # decays monotonically
    # a resample after step 50 restarts the warm-up: update 50 gets 1/10 again
    r = [lr_multiplier(t, total, 10, 20, last_resample_step=50) for t in range(total)]
    assert r[:50] == m[:50] and r[50] == pytest.approx(0.1) and r[54] == pytest.approx(0.5) and r[59] == 1.0


def test_sparsity_warmup_is_linear():
    assert [sparsity_coeff_at(t, 2.0, 4) for t in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert sparsity_coeff_at(0, 2.0, 0) == 2.0
    cfg = _cfg(total_steps=200, sparsity_warmup_frac=0.05)
    assert cfg.sparsity_warmup == 10


def test_history_records_schedules():
    cfg = _cfg(total_steps=40, lr_warmup_steps=20, lr_decay_frac=0.25, sparsity_warmup_frac=0.5,
               grad_clip_norm=1.0, log_every=5)
    hist = train_sae(_make("april"), _data(), cfg)
    assert [h["step"] for h in hist] == list(range(5, 41, 5))
    by_step = {h["step"]: h for h in hist}
    assert by_step[5]["lr"] == pytest.approx(cfg.lr * 5 / 20)            # update 5 is t = 4
    assert by_step[20]["lr"] == pytest.approx(cfg.lr)
    assert by_step[40]["lr"] == pytest.approx(cfg.lr / 10)               # last of 10 decay steps
    assert by_step[10]["sparsity_coeff"] == pytest.approx(cfg.sparsity_coeff * 10 / 20)
    assert by_step[40]["sparsity_coeff"] == cfg.sparsity_coeff
    for h in hist:
        assert {"loss", "reconstruction", "sparsity", "aux", "l0", "tokens", "grad_norm"} <= h.keys()
        assert h["loss"] == pytest.approx(h["reconstruction"] + h["sparsity_coeff"] * h["sparsity"] + h["aux"],
                                          rel=1e-5)
    assert hist[-1]["loss"] < hist[0]["loss"]                               # it learns


# ----------------------------------------------------------------------------- batching

def test_tensor_batches_are_epochwise_permutations_and_rank_slices():
    data = torch.arange(40.0).reshape(20, 2)
    src = TensorBatches(data, batch_size=6, seed=3)                         # 3 batches / epoch, 2 rows dropped
    epoch0 = torch.cat([src.next_batch() for _ in range(3)])
    assert src.state_dict()["epoch"] == 1 and src.state_dict()["index"] == 0
    assert len(set(epoch0[:, 0].tolist())) == 18                            # no row twice within an epoch
    epoch1 = torch.cat([src.next_batch() for _ in range(3)])
    assert not torch.equal(epoch0, epoch1)                                  # a new shuffle each epoch
    # two ranks: same global permutation, rank-strided slices of each global batch
    ranks = [TensorBatches(data, batch_size=6, seed=3, rank=r, world_size=2) for r in range(2)]
    again = TensorBatches(data, batch_size=6, seed=3)
    for _ in range(4):
        full, parts = again.next_batch(), [r.next_batch() for r in ranks]
        assert torch.equal(full[0::2], parts[0]) and torch.equal(full[1::2], parts[1])


def test_batch_shape_is_checked():
    bad = iter([torch.randn(32, D_IN)] * 4)
    with pytest.raises(ValueError, match=r"expected \(64, 16\)"):
        train_sae(_make("relu"), bad, _cfg(total_steps=2))


def test_iterator_input_trains_and_warns_that_it_cannot_resume(tmp_path):
    data = _data()
    batches = (data[i * 64:(i + 1) * 64] for i in range(16))
    with pytest.warns(UserWarning, match="iterator"):
        hist = train_sae(_make("relu"), batches, _cfg(total_steps=8, checkpoint_dir=str(tmp_path),
                                                        checkpoint_every=4, log_every=4))
    assert [h["step"] for h in hist] == [4, 8]


# ----------------------------------------------------------------------------- determinism and resume

def test_cpu_training_is_deterministic_for_a_seed():
    runs = []
    for seed in (0, 0, 1):
        sae = _make("relu")
        train_sae(sae, _data(), _cfg(seed=seed))
        runs.append(_state(sae))
    _assert_bitwise(runs[0], runs[1])
    assert not torch.equal(runs[0]["W_enc"], runs[2]["W_enc"])              # the seed reorders batches


RESUME_CASES = {
    # resampling every 12 steps (window 6), LR re-warm-up, clipping: every piece of state is exercised
    "relu": dict(resample_every=12, resample_window=6, resample_pool=256, lr_warmup_steps=4,
                 lr_decay_frac=0.2, grad_clip_norm=1.0),
    "april": dict(sparsity_warmup_frac=0.5, lr_decay_frac=0.2, grad_clip_norm=1.0, adam_betas=(0.9, 0.999)),
    "gated": dict(resample=True, resample_every=12, resample_pool=256, lr_warmup_steps=4),
    "jumprelu": dict(sparsity_warmup_steps=10),
    "topk": dict(sparsity_coeff=None),
}


@pytest.mark.parametrize("kind", list(RESUME_CASES))
def test_interrupted_and_resumed_run_is_bitwise_identical(kind, tmp_path, monkeypatch):
    data, cfg_kw = _data(), dict(RESUME_CASES[kind], checkpoint_every=5, log_every=5)
    n_dead = 8 if kind in ("relu", "gated") else 0
    reference = _make(kind, n_dead=n_dead)
    ref_hist = train_sae(reference, data, _cfg(**cfg_kw))

    interrupted = _make(kind, n_dead=n_dead)
    _crash_on_call(monkeypatch, interrupted, 23)                            # dies in step 23
    cfg = _cfg(**cfg_kw, checkpoint_dir=str(tmp_path))
    with pytest.raises(Crash):
        train_sae(interrupted, data, cfg)
    assert latest_checkpoint(tmp_path).name == "step_000000020.json"

    resumed = _make(kind, seed=123)                                         # a fresh process: other init
    hist = train_sae(resumed, data, cfg, resume=True)
    _assert_bitwise(_state(reference), _state(resumed))
    assert hist == ref_hist
    if kind in ("relu", "gated"):
        assert sum(h["n_resampled"] for h in hist) > 0                      # resampling really happened


def test_resume_refuses_a_config_that_changes_the_result(tmp_path):
    cfg = _cfg(total_steps=10, checkpoint_dir=str(tmp_path), checkpoint_every=5)
    train_sae(_make("relu"), _data(), cfg)
    with pytest.raises(ValueError, match="lr"):
        train_sae(_make("relu"), _data(), _cfg(total_steps=10, lr=1e-2, checkpoint_dir=str(tmp_path)),
                  resume=True)


def test_resume_of_a_finished_run_returns_its_history(tmp_path):
    cfg = _cfg(total_steps=10, checkpoint_dir=str(tmp_path), checkpoint_every=5, log_every=5)
    first = _make("relu")
    hist = train_sae(first, _data(), cfg)
    again = _make("relu", seed=9)
    assert train_sae(again, _data(), cfg, resume=True) == hist
    _assert_bitwise(_state(first), _state(again))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000005.json", "step_000000010.json"]
    # an explicit checkpoint (resume_from) continues from step 5 to the same end
    from_five = _make("relu", seed=5)
    cfg5 = _cfg(total_steps=10, log_every=5, resume_from=str(tmp_path / "step_000000005.json"))
    assert train_sae(from_five, _data(), cfg5) == hist
    _assert_bitwise(_state(first), _state(from_five))


def test_unusable_inputs_are_refused_early(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train_sae(_make("relu"), _data(), _cfg(checkpoint_dir=str(not_a_dir)))
    with pytest.raises(ValueError, match="resume=True needs"):
        train_sae(_make("relu"), _data(), _cfg(), resume=True)
    with pytest.raises(ValueError, match="sae must be"):
        train_sae(torch.nn.Linear(2, 2), _data(), _cfg())
    with pytest.raises(ValueError, match="batch_size=2048 is larger"):
        train_sae(_make("relu"), _data(), _cfg(batch_size=2048))


# ----------------------------------------------------------------------------- numerical guards

def test_nan_in_a_loss_term_names_the_step_and_term_and_keeps_the_checkpoint(tmp_path):
    sae = _make("relu")
    original, calls = sae.loss, [0]

    def loss(x, c):
        calls[0] += 1
        out = original(x, c)
        if calls[0] == 7:                                                   # step 7: NaN in the penalty
            out.sparsity = out.sparsity * float("nan")
            out.loss = out.reconstruction + c * out.sparsity
        return out
    sae.loss = loss
    cfg = _cfg(total_steps=20, checkpoint_dir=str(tmp_path), checkpoint_every=5)
    with pytest.raises(NonFiniteError, match=r"sparsity loss term at step 7\b") as err:
        train_sae(sae, _data(), cfg)
    assert str(tmp_path) in str(err.value)
    assert all(torch.isfinite(p).all() for p in sae.parameters())          # checked before the step
    assert latest_checkpoint(tmp_path).name == "step_000000005.json"
    tensors, manifest = load_checkpoint(tmp_path)                           # intact and usable
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))
    resumed = _make("relu")
    hist = train_sae(resumed, _data(), cfg, resume=True)                    # continues from step 5
    assert hist[-1]["step"] == 20 and math.isfinite(hist[-1]["loss"])


def test_nan_in_a_parameter_after_a_step_is_named():
    sae = _make("relu")
    calls = [0]

    def poison():
        calls[0] += 1
        if calls[0] == 3:
            with torch.no_grad():
                sae.b_dec[0] = float("inf")
    sae.after_optimizer_step = poison
    with pytest.raises(NonFiniteError, match=r"parameter b_dec at step 3\b"):
        train_sae(sae, _data(), _cfg(total_steps=10))


def test_deferred_checks_say_when_the_last_check_passed():
    sae = _make("relu")
    calls = [0]
    original = sae.loss

    def loss(x, c):
        calls[0] += 1
        out = original(x, c)
        if calls[0] >= 13:
            out.reconstruction = out.reconstruction + float("inf")
            out.loss = out.loss + float("inf")
        return out
    sae.loss = loss
    with pytest.raises(NonFiniteError, match=r"reconstruction loss term at step 15 \(the previous check, "
                                             r"after step 10, passed\)"):
        train_sae(sae, _data(), _cfg(total_steps=20, check_finite_every=5, log_every=5))


def test_bf16_autocast_runs():
    sae = _make("jumprelu")
    hist = train_sae(sae, _data(), _cfg(total_steps=10, precision="bf16", log_every=5))
    assert sae.W_enc.dtype == torch.float32 and math.isfinite(hist[-1]["loss"])


def test_cuda_is_used_when_present():
    sae = _make("relu")
    train_sae(sae, _data(), _cfg(total_steps=2))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert sae.W_enc.device.type == expected
