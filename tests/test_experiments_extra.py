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


def test_run_watched_is_the_same_training_as_run_and_fills_the_cache(monkeypatch, tmp_path):
    """A watched run trains bitwise the SAE run() trains, stores it when the cache lacks it (so run() then loads
    it), and hands back the wrapper that saw every batch."""
    import torch

    from saelib.lab import experiments
    from saelib.lab.experiments import SAESpec, SyntheticSite, run, run_watched
    from saelib.lab.protocol import Protocol
    from saelib.lab.scales import get_scale

    class Counting:                               # a batch source that only counts what it serves
        def __init__(self, batches, sae):
            from saelib.training.batches import as_batch_source
            self.source, self.sae, self.served = as_batch_source(batches, 256, 1), sae, 0   # smoke batch, seed 1

        def next_batch(self):
            self.served += 1
            return self.source.next_batch()

        def state_dict(self):
            return self.source.state_dict()

        def load_state_dict(self, state):
            self.source.load_state_dict(state)

    site = SyntheticSite(get_scale("smoke", train_steps=12), seed=0, n_features=16, d_in=8)
    spec, protocol = SAESpec("jumprelu", 1e-3), Protocol()

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path / "plain"))
    plain = run(site, spec, seed=1, protocol=protocol)
    assert not plain.loaded

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path / "watched"))
    watched, source = run_watched(site, spec, 1, watch=Counting, protocol=protocol)
    assert isinstance(source, Counting) and source.served >= 12
    for name, p in plain.sae.state_dict().items():
        assert torch.equal(p, watched.sae.state_dict()[name]), name
    assert watched.metrics == plain.metrics
    calls = experiments._TRAIN_CALLS[0]
    again = run(site, spec, seed=1, protocol=protocol)          # stored by run_watched: loaded, not trained
    assert again.loaded and experiments._TRAIN_CALLS[0] == calls
    for name, p in again.sae.named_parameters():
        assert torch.equal(p, dict(plain.sae.named_parameters())[name]), name
    # a second watched run trains again (its wrapper must see the batches) and leaves the cached run as it was
    before = (again.path / "metrics.json").read_bytes()
    _, source2 = run_watched(site, spec, 1, watch=Counting, protocol=protocol)
    assert source2.served == source.served and (again.path / "metrics.json").read_bytes() == before
