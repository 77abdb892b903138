"""saelib.lab.successors: notebooks 08 and 10 build the same successor specs (so they share the run cache)."""
from types import SimpleNamespace

from saelib.lab.experiments import SAESpec, coefficient_grid
from saelib.lab.scales import get_scale
from saelib.lab.successors import SUCCESSOR_COLORS, successor_ks, successor_specs


def _site(scale="default"):
    return SimpleNamespace(scale=get_scale(scale), d_in=64)


def test_successor_specs_are_notebook_10s():
    site = _site()
    ks = successor_ks(site, 3)
    specs = successor_specs(site, 3)
    assert set(specs) == set(SUCCESSOR_COLORS)
    assert [s.options["k"] for s in specs["batchtopk"]] == ks and len(ks) == 3
    assert specs["batchtopk"][0] == SAESpec("batchtopk", 0.0, {"k": ks[0]}, label="batchtopk")
    assert [s.sparsity_coeff for s in specs["jumprelu 2025"]] == coefficient_grid(1e-3, 3e-2, 3)
    assert specs["jumprelu 2025"][0].options == {"sparsity_mode": "tanh", "tanh_scale": 4.0, "encoder_ste": True,
                                                 "pre_act_loss_coeff": 3e-6}
    assert [s.options["target_l0"] for s in specs["jumprelu quadratic"]] == [float(k) for k in ks]
    assert all(s.sparsity_coeff == 0.01 for s in specs["jumprelu quadratic"])
    assert successor_specs(site, 3) == specs                  # deterministic: the same specs, the same cache keys


def test_successor_specs_options():
    specs = successor_specs(_site(), 2, target_l0s=[5.0, 9.0], quadratic_coeff=0.1, tanh_scale=2.0)
    assert [s.options["target_l0"] for s in specs["jumprelu quadratic"]] == [5.0, 9.0]
    assert specs["jumprelu quadratic"][0].sparsity_coeff == 0.1
    assert specs["jumprelu 2025"][1].options["tanh_scale"] == 2.0
