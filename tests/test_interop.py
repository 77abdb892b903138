import json

import numpy as np
import pytest
import torch

from saelib import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from saelib.interop import from_sae_lens, load_gemma_scope_npz, to_sae_lens
from saelib.io import CFG_FILENAME, load_sae, save_sae

D_IN, D_SAE = 16, 48
SAE_LENS_SKIP = "optional sae-lens extra not installed (pip install 'saelib[bench]')"


def sae_lens_or_skip():
    return pytest.importorskip("sae_lens", reason=SAE_LENS_SKIP)


def randomize(module, seed=0, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def inputs(seed=1, n=300):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) + 0.3


# ----------------------------------------------------------------------------- Gemma Scope params.npz

def gemma_scope_params(seed=0, d_in=D_IN, d_sae=D_SAE):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(0, 0.5, (d_in, d_sae)).astype(np.float32),
        "W_dec": rng.normal(0, 0.5, (d_sae, d_in)).astype(np.float32),
        "b_enc": rng.normal(0, 0.1, d_sae).astype(np.float32),
        "b_dec": rng.normal(0, 1.0, d_in).astype(np.float32),
        "threshold": rng.uniform(0.05, 0.8, d_sae).astype(np.float32),
    }


def gemma_scope_reference(params, x):
    """Gemma Scope's own forward pass (its tutorial's JumpReLUSAE), in float64."""
    p = {k: torch.from_numpy(v).double() for k, v in params.items()}
    pre = x.double() @ p["W_enc"] + p["b_enc"]          # no b_dec subtracted
    f = (pre > p["threshold"]) * torch.relu(pre)
    return f, f @ p["W_dec"] + p["b_dec"]


def test_gemma_scope_npz_imports_to_equivalent_jumprelu(tmp_path):
    params = gemma_scope_params()
    params["threshold"][:4] = [-0.2, 0.0, -1.0, 0.0]      # non-positive thresholds act as 0 behind the ReLU
    np.savez(tmp_path / "params.npz", **params)
    sae = load_gemma_scope_npz(tmp_path / "params.npz")
    assert isinstance(sae, JumpReLUSAE) and (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
    assert torch.equal(sae.W_dec.detach(), torch.from_numpy(params["W_dec"]))
    x = inputs()
    f_ref, x_hat_ref = gemma_scope_reference(params, x)
    f = sae.encode(x).detach()
    assert 0.05 < (f_ref != 0).double().mean() < 0.95
    assert torch.equal(f != 0, f_ref != 0)                # the same features fire
    assert torch.allclose(f.double(), f_ref, atol=1e-5)
    assert torch.allclose(sae(x).detach().double(), x_hat_ref, atol=1e-5)


def test_gemma_scope_through_save_and_load(tmp_path):
    params = gemma_scope_params(seed=1)
    np.savez(tmp_path / "params.npz", **params)
    sae = load_gemma_scope_npz(tmp_path / "params.npz")
    save_sae(sae, tmp_path / "saved", model_name="gemma-2-2b", hook_name="blocks.12.hook_resid_post")
    back = load_sae(tmp_path / "saved")
    x = inputs()
    assert torch.equal(back(x), sae(x))


def test_gemma_scope_lowercase_names_and_expected_d_in(tmp_path):
    params = gemma_scope_params(seed=2)
    params["w_enc"], params["w_dec"] = params.pop("W_enc"), params.pop("W_dec")
    np.savez(tmp_path / "params.npz", **params)
    sae = load_gemma_scope_npz(tmp_path / "params.npz", expected_d_in=D_IN)
    assert sae.W_enc.shape == (D_IN, D_SAE)
    with pytest.raises(ValueError, match="expected_d_in=2304"):
        load_gemma_scope_npz(tmp_path / "params.npz", expected_d_in=2304)


def test_gemma_scope_bad_files(tmp_path):
    params = gemma_scope_params()
    np.savez(tmp_path / "no_threshold.npz", **{k: v for k, v in params.items() if k != "threshold"})
    with pytest.raises(ValueError, match=r"no_threshold\.npz: missing parameter\(s\) \['threshold'\]"):
        load_gemma_scope_npz(tmp_path / "no_threshold.npz")

    np.savez(tmp_path / "bad_shape.npz", **{**params, "b_dec": np.zeros(D_IN + 2, np.float32)})
    with pytest.raises(ValueError, match=r"bad_shape\.npz: parameter 'b_dec' has shape \(18,\)"):
        load_gemma_scope_npz(tmp_path / "bad_shape.npz")

    # an object array inside the archive would need pickle: refused
    np.savez(tmp_path / "pickled.npz", **{**params, "threshold": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        load_gemma_scope_npz(tmp_path / "pickled.npz")

    with pytest.raises(ValueError, match="file not found"):
        load_gemma_scope_npz(tmp_path / "absent.npz")
    np.save(tmp_path / "single.npy", params["W_enc"])
    with pytest.raises(ValueError, match="not an .npz archive"):
        load_gemma_scope_npz(tmp_path / "single.npy")


# ----------------------------------------------------------------------------- SAELens

OURS = {
    "standard": lambda: ReLUSAE(D_IN, D_SAE),
    "gated": lambda: GatedSAE(D_IN, D_SAE),
    "gated_no_r_mag": lambda: GatedSAE(D_IN, D_SAE, mag_weights="no_r_mag"),
    "jumprelu": lambda: JumpReLUSAE(D_IN, D_SAE),
    "topk": lambda: TopKSAE(D_IN, D_SAE, k=6),
}


def our_sae(name):
    torch.manual_seed(0)
    sae = randomize(OURS[name]())
    if isinstance(sae, JumpReLUSAE):
        with torch.no_grad():
            sae.log_threshold.copy_(torch.log(0.4 * torch.rand(D_SAE) + 0.01))
    return sae


@pytest.mark.parametrize("name", OURS)
def test_sae_lens_loads_our_export_with_the_same_reconstructions(tmp_path, name):
    sae_lens = sae_lens_or_skip()
    sae = our_sae(name)
    save_sae(sae, tmp_path, model_name="tiny", hook_name="blocks.0.hook_resid_post")
    lens = sae_lens.SAE.load_from_disk(tmp_path)
    assert lens.cfg.architecture() == sae.architecture
    assert lens.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    x = inputs()
    with torch.no_grad():
        f, lens_f = sae.encode(x), lens.encode(x)
        assert 0 < (f != 0).float().mean() < 1
        assert torch.equal(f != 0, lens_f != 0)
        assert torch.allclose(lens_f, f, atol=1e-5)     # Gated's magnitude matmul is associated differently
        assert torch.allclose(lens(x), sae(x), atol=1e-5)
    # and back: SAELens's own save_model -> our load_sae
    lens.save_model(tmp_path / "resaved")
    back = load_sae(tmp_path / "resaved")
    assert type(back) is type(sae)
    with torch.no_grad():
        assert torch.allclose(back(x), sae(x), atol=1e-5)


def test_untied_gated_export_is_refused_by_to_sae_lens():
    sae_lens_or_skip()
    with pytest.raises(ValueError, match="untied"):
        to_sae_lens(GatedSAE(D_IN, D_SAE, mag_weights="untied"))


@pytest.mark.parametrize("name", OURS)
def test_in_memory_round_trip(name):
    sae_lens_or_skip()
    sae = our_sae(name)
    lens = to_sae_lens(sae, hook_name="blocks.0.hook_resid_post")
    back = from_sae_lens(lens)
    x = inputs()
    with torch.no_grad():
        assert torch.allclose(lens(x), sae(x), atol=1e-5)
        assert torch.equal(back(x), sae(x))


def _lens_sae(sae_lens, architecture, **cfg):
    """A sae_lens SAE built by sae_lens itself, with random weights."""
    from sae_lens.registry import get_sae_class
    cls, cfg_cls = get_sae_class(architecture)
    lens = randomize(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **cfg)), seed=3, scale=0.3)
    if architecture == "jumprelu":
        with torch.no_grad():
            lens.threshold.copy_(0.3 * torch.rand(D_SAE))
    return lens


@pytest.mark.parametrize("architecture, cfg", [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("gated", {}),
    ("gated", {"apply_b_dec_to_input": False}),
    ("jumprelu", {}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
    ("topk", {"k": 7}),
    ("topk", {"k": 7, "rescale_acts_by_decoder_norm": True}),
])
def test_folders_written_by_sae_lens_load_to_the_same_outputs(tmp_path, architecture, cfg):
    sae_lens = sae_lens_or_skip()
    lens = _lens_sae(sae_lens, architecture, **cfg)
    with torch.no_grad():
        if cfg.get("rescale_acts_by_decoder_norm"):
            lens.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)   # norms far from 1, so the conversion matters
        lens.b_dec.add_(1.0)                              # a large b_dec, so apply_b_dec_to_input matters
    lens.save_model(tmp_path)
    assert "saelib" not in json.loads((tmp_path / CFG_FILENAME).read_text())
    sae = load_sae(tmp_path)
    assert sae.architecture == architecture
    x = inputs()
    with torch.no_grad():
        lens_f, f = lens.encode(x), sae.encode(x)
        assert 0 < (f != 0).float().mean() < 1
        assert torch.equal(f != 0, lens_f != 0)
        if not cfg.get("rescale_acts_by_decoder_norm"):   # rescaled codes live in a different unit
            assert torch.allclose(f, lens_f, atol=1e-5)
        assert torch.allclose(sae(x), lens(x), atol=1e-5)
    assert torch.allclose(from_sae_lens(lens)(x), sae(x), atol=1e-6)
