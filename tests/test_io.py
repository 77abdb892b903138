import json
import math
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from saelib import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from saelib.io import CFG_FILENAME, WEIGHTS_FILENAME, load_sae, save_sae

D_IN, D_SAE = 12, 40

FACTORIES = {
    "relu": lambda: ReLUSAE(D_IN, D_SAE),
    "relu_april": lambda: ReLUSAE(D_IN, D_SAE, variant="april_update"),
    "gated": lambda: GatedSAE(D_IN, D_SAE),
    "gated_no_r_mag": lambda: GatedSAE(D_IN, D_SAE, mag_weights="no_r_mag"),
    "gated_untied": lambda: GatedSAE(D_IN, D_SAE, mag_weights="untied", penalty="decoder_norm"),
    "jumprelu": lambda: JumpReLUSAE(D_IN, D_SAE, kernel="triangular", bandwidth=0.01),
    "topk": lambda: TopKSAE(D_IN, D_SAE, k=5, aux_k=8),
}


def make_sae(name, seed=0):
    """An SAE with random, non-trivial parameters (so every weight matters to the output)."""
    torch.manual_seed(seed)
    sae = FACTORIES[name]()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if isinstance(sae, JumpReLUSAE):
            sae.log_threshold.copy_(torch.log(0.3 * torch.rand(D_SAE) + 0.01))
    return sae


def inputs(seed=1, n=200):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) + 0.5


@pytest.mark.parametrize("name", FACTORIES)
def test_saved_sae_reloads_to_identical_outputs(tmp_path, name):
    sae = make_sae(name)
    save_sae(sae, tmp_path / name)
    back = load_sae(tmp_path / name)
    assert type(back) is type(sae)
    assert back.config() == sae.config()
    for pname, p in sae.named_parameters():
        assert torch.equal(getattr(back, pname), p), pname
    x = inputs()
    f = sae.encode(x)
    assert 0 < (f != 0).float().mean() < 1  # the test is not trivial
    assert torch.equal(back.encode(x), f)
    assert torch.equal(back(x), sae(x))


@pytest.mark.parametrize("name, expected", [
    ("relu", {"W_enc", "b_enc", "W_dec", "b_dec"}),
    ("topk", {"W_enc", "b_enc", "W_dec", "b_dec"}),
    ("jumprelu", {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}),
    ("gated", {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"}),
])
def test_sae_lens_layout_and_names(tmp_path, name, expected):
    sae = make_sae(name)
    save_sae(sae, tmp_path, model_name="tiny", hook_name="blocks.1.hook_resid_post", metadata={"context_size": 64})
    files = sorted(p.name for p in tmp_path.iterdir())                                 # no temp files left
    stateful = getattr(sae, "aux_k", None) is not None or getattr(sae, "adaptive", False)
    assert files == sorted([CFG_FILENAME, WEIGHTS_FILENAME] + (["saelib_buffers.safetensors"] if stateful else []))
    with safe_open(tmp_path / WEIGHTS_FILENAME, "pt") as f:
        assert set(f.keys()) == expected
        assert f.get_tensor("W_enc").shape == (D_IN, D_SAE)
        assert f.get_tensor("W_dec").shape == (D_SAE, D_IN)
        if name == "jumprelu":
            assert torch.allclose(f.get_tensor("threshold"), sae.threshold.detach())
        if name == "gated":
            assert torch.equal(f.get_tensor("W_enc"), sae.W_gate.detach())
    cfg = json.loads((tmp_path / CFG_FILENAME).read_text())
    assert cfg["architecture"] == sae.architecture and (cfg["d_in"], cfg["d_sae"]) == (D_IN, D_SAE)
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["dtype"] == "float32"
    assert cfg["metadata"] == {"model_name": "tiny", "hook_name": "blocks.1.hook_resid_post", "context_size": 64}
    assert cfg["saelib"]["config"] == sae.config()
    if name == "topk":
        assert cfg["k"] == 5


@pytest.mark.parametrize("name", ["relu", "gated", "gated_untied", "jumprelu", "topk"])
def test_scaling_factor_is_folded_into_a_copy(tmp_path, name):
    sae = make_sae(name)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    s = 3.7
    save_sae(sae, tmp_path, scaling_factor=s)
    for k, v in sae.state_dict().items():  # the live SAE is untouched
        assert torch.equal(v, before[k]), k
    back = load_sae(tmp_path)
    raw = inputs() * 5.0
    # trained on s * x: the saved SAE takes raw x and returns raw-space reconstructions
    assert torch.allclose(back(raw), sae(s * raw) / s, atol=1e-5)
    assert torch.equal(back.encode(raw) != 0, sae.encode(s * raw) != 0)
    assert json.loads((tmp_path / CFG_FILENAME).read_text())["saelib"]["input_scaling_folded"] == s
    with pytest.raises(ValueError, match="scaling_factor"):
        save_sae(sae, tmp_path, scaling_factor=-1.0)


def test_dtype_is_kept_and_can_be_cast(tmp_path):
    sae = make_sae("jumprelu").double()
    save_sae(sae, tmp_path)
    assert json.loads((tmp_path / CFG_FILENAME).read_text())["dtype"] == "float64"
    back = load_sae(tmp_path)
    assert back.W_dec.dtype == torch.float64
    x = inputs().double()
    assert torch.equal(back(x), sae(x))
    assert load_sae(tmp_path, dtype=torch.float32).W_enc.dtype == torch.float32


# ----------------------------------------------------------------------------- refusing bad files

def test_pickle_file_is_refused_and_never_executed(tmp_path):
    save_sae(make_sae("relu"), tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / WEIGHTS_FILENAME).write_bytes(pickle.dumps({"W_enc": Payload()}))
    with pytest.raises(ValueError, match="sae_weights.safetensors.*never unpickles"):
        load_sae(tmp_path)
    assert not marker.exists()

    # a real torch.save'd state dict under the expected name is refused as well
    torch.save(make_sae("relu").state_dict(), tmp_path / WEIGHTS_FILENAME)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_sae(tmp_path)


@pytest.mark.parametrize("missing", [CFG_FILENAME, WEIGHTS_FILENAME])
def test_missing_file_is_named(tmp_path, missing):
    save_sae(make_sae("relu"), tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ValueError, match=f"{missing}: file not found"):
        load_sae(tmp_path)


def test_not_a_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_sae(tmp_path / "nowhere")


def _rewrite_weights(folder, edit):
    tensors = load_file(folder / WEIGHTS_FILENAME)
    edit(tensors)
    save_file(tensors, folder / WEIGHTS_FILENAME)


def test_wrong_shape_names_file_and_parameter(tmp_path):
    save_sae(make_sae("jumprelu"), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.update(threshold=torch.ones(D_SAE + 1)))
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: parameter 'threshold' has shape \(41,\), "
                                         r"expected \(40,\)"):
        load_sae(tmp_path)


def test_missing_and_unexpected_parameters(tmp_path):
    save_sae(make_sae("gated"), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.pop("b_mag"))
    with pytest.raises(ValueError, match="missing parameter 'b_mag'"):
        load_sae(tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.update(b_mag=torch.zeros(D_SAE), b_enc=torch.zeros(D_SAE)))
    with pytest.raises(ValueError, match=r"unexpected parameter\(s\) \['b_enc'\]"):
        load_sae(tmp_path)


def test_expected_d_in_mismatch(tmp_path):
    save_sae(make_sae("topk"), tmp_path)
    assert load_sae(tmp_path, expected_d_in=D_IN).d_in == D_IN
    with pytest.raises(ValueError, match=r"cfg\.json: d_in=12 does not match expected_d_in=768"):
        load_sae(tmp_path, expected_d_in=768)


def test_bad_config_values(tmp_path):
    save_sae(make_sae("relu"), tmp_path)
    cfg = json.loads((tmp_path / CFG_FILENAME).read_text())
    del cfg["saelib"]
    for key, value, match in [("architecture", "transcoder", "architecture='transcoder'"),
                              ("normalize_activations", "layer_norm", "normalize_activations"),
                              ("d_in", "12", "d_in")]:
        (tmp_path / CFG_FILENAME).write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(ValueError, match=match):
            load_sae(tmp_path)
    (tmp_path / CFG_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match="cfg.json: not valid JSON"):
        load_sae(tmp_path)


def test_plain_sae_lens_cfg_without_saelib_key_loads_defaults(tmp_path):
    sae = make_sae("topk")
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / CFG_FILENAME).read_text())
    del cfg["saelib"]
    (tmp_path / CFG_FILENAME).write_text(json.dumps(cfg))
    back = load_sae(tmp_path)
    assert isinstance(back, TopKSAE) and back.k == 5
    x = inputs()
    assert torch.equal(back(x), sae(x))


def test_threshold_zero_round_trips(tmp_path):
    # GatedSAE.to_jumprelu() can give theta = 0 (log_threshold = -inf)
    sae = make_sae("jumprelu")
    with torch.no_grad():
        sae.log_threshold[:5] = -math.inf
    save_sae(sae, tmp_path)
    back = load_sae(tmp_path)
    assert torch.equal(back.threshold, sae.threshold)
    x = inputs()
    assert torch.equal(back(x), sae(x))


def test_adapted_jumprelu_bandwidths_survive_save_and_load(tmp_path):
    from saelib import JumpReLUSAE
    from saelib.io import load_sae, save_sae

    torch.manual_seed(0)
    sae = JumpReLUSAE(8, 32, bandwidth="adaptive")
    for _ in range(5):
        sae.loss(torch.randn(256, 8), 0.1)            # adapts the per-feature bandwidths
    assert not torch.allclose(sae.bandwidths, torch.full_like(sae.bandwidths, 1e-3))   # (held in float64)
    loaded = load_sae(save_sae(sae, tmp_path / "sae"))
    assert torch.equal(loaded.bandwidths, sae.bandwidths)
