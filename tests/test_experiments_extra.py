import pytest

from saelib.lab.experiments import TOPK_KS, frontier_specs


def test_topk_frontier_keeps_the_shared_ks_without_max_k():
    specs = frontier_specs("topk", 2)
    assert [s.options["k"] for s in specs] == [TOPK_KS[0], TOPK_KS[-1]]


def test_topk_frontier_respects_max_k():
    ks = [s.options["k"] for s in frontier_specs("topk", 3, max_k=128)]
    assert max(ks) <= 128 and ks == sorted(ks) and len(ks) == 3
    assert ks[0] == TOPK_KS[0] and ks[-1] == 128
    # below the smallest preset k, the frontier is the single point k = max_k
    assert [s.options["k"] for s in frontier_specs("topk", 4, max_k=4)] == [4]


def test_max_k_is_validated_and_ignored_by_coefficient_sweeps():
    with pytest.raises(ValueError, match="max_k"):
        frontier_specs("topk", 2, max_k=0)
    assert frontier_specs("gated", 2, max_k=8) == frontier_specs("gated", 2)


def test_lm_cache_key_follows_the_model_weights():
    """Retraining (or swapping) the model must not reuse activations cached from other weights."""
    import torch

    from saelib.lab.experiments import model_fingerprint

    def model(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))

    a, b = model(0), model(0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b[1].bias[0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    # large models are hashed through a strided sample: still deterministic, still weight-sensitive
    assert model_fingerprint(a, max_elements=10) == model_fingerprint(model(0), max_elements=10)
    assert model_fingerprint(a, max_elements=10) != model_fingerprint(model(1), max_elements=10)


def test_sweep_trains_every_spec_at_every_seed_spec_major_with_the_protocol(monkeypatch, tmp_path):
    from pathlib import Path

    from saelib.lab import experiments
    from saelib.lab.experiments import SAESpec, SyntheticSite, sweep
    from saelib.lab.protocol import Protocol
    from saelib.lab.scales import get_scale

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    calls = []

    class Fake:
        def __init__(self, spec, seed):
            self.spec, self.seed, self.loaded = spec, seed, False
            self.path = Path(f"/runs/{spec.sparsity_coeff}-{seed}")

    def fake_run(site, spec, seed=0, **kwargs):
        calls.append((spec.sparsity_coeff, seed, kwargs.get("protocol")))
        return Fake(spec, seed)

    def fake_train(site, spec, seed, *, force, protocol):
        calls.append(("trained", spec.sparsity_coeff, seed, protocol))
        return True

    monkeypatch.setattr(experiments, "run", fake_run)
    monkeypatch.setattr(experiments, "_train_unless_claimed", fake_train)
    site = SyntheticSite(get_scale("smoke", train_steps=10), seed=0, n_features=16, d_in=8)
    protocol = Protocol(budget=2.0)
    specs = [SAESpec("gated", 0.1), SAESpec("gated", 0.2)]
    out = sweep(site, specs, seeds=(3, 5), protocol=protocol, verbose=False, progress=False)
    # nothing is cached: a first pass trains every run (spec-major), the second collects them in the same order
    order = [(0.1, 3), (0.1, 5), (0.2, 3), (0.2, 5)]
    assert [c[1:3] for c in calls[:4]] == order and all(c[0] == "trained" for c in calls[:4])
    assert [c[:2] for c in calls[4:]] == order
    assert all(c[-1] is protocol for c in calls) and [r.seed for r in out] == [3, 5, 3, 5]
    assert not any(r.loaded for r in out)                                # trained by this sweep
    calls.clear()
    sweep(site, specs, 7, verbose=False, progress=False)                 # one seed, the old call
    assert [c[1:3] for c in calls[:2]] == [(0.1, 7), (0.2, 7)] and [c[:2] for c in calls[2:]] == [(0.1, 7), (0.2, 7)]
