"""GatedSAE's options for two seed claims (notebooks 02 and 07): the encoder initialisation (W_gate = W_dec^T,
or drawn on its own) and b_mag tied to exp(r_mag) * b_gate (a ReLU SAE with a learned rescale, trained with
the Gated loss)."""
import pytest
import torch

from saelib import GatedSAE
from saelib.io import load_sae, sae_from_sae_lens_state, sae_lens_state, save_sae
from saelib.models.base import ENCODER_INITS


def _gated(seed=0, **options):
    torch.manual_seed(seed)
    return GatedSAE(16, 48, **options).double()


def test_default_encoder_is_the_decoder_transpose_and_the_default_draws_are_unchanged():
    default, explicit = _gated(), _gated(encoder_init="transpose")
    assert torch.equal(default.W_gate, default.W_dec.T)
    for name, p in default.state_dict().items():
        assert torch.equal(p, explicit.state_dict()[name]), name


def test_independent_encoder_keeps_the_decoder_and_the_norms_but_not_the_direction():
    tied, free = _gated(), _gated(encoder_init="independent")
    assert torch.equal(free.W_dec, tied.W_dec)                       # the decoder is drawn first, as before
    assert not torch.allclose(free.W_gate, free.W_dec.T)
    torch.testing.assert_close(free.W_gate.norm(dim=0), free.W_dec.norm(dim=1))   # same norms per feature
    cosines = (free.W_gate.T * free.W_dec).sum(-1) / free.W_dec.norm(dim=1).pow(2)
    assert cosines.abs().max() < 0.9                                 # 16-dim random directions: far from 1
    april = _gated(encoder_init="independent", penalty="decoder_norm")
    torch.testing.assert_close(april.W_gate.norm(dim=0), torch.full((48,), 0.1, dtype=torch.float64))


def test_tied_magnitude_bias_is_a_rescaled_relu_sae():
    sae = _gated(mag_bias="tied")
    assert "b_mag" not in dict(sae.named_parameters())
    with torch.no_grad():
        sae.b_gate.normal_(0, 0.3)
        sae.r_mag.normal_(0, 0.3)
    x = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pi_gate, _ = sae.pre_activations(x)
    torch.testing.assert_close(sae.magnitude_bias(), torch.exp(sae.r_mag) * sae.b_gate)
    torch.testing.assert_close(sae.encode(x), torch.exp(sae.r_mag) * torch.relu(pi_gate))
    assert torch.equal(sae.jumprelu_threshold(), torch.zeros(48, dtype=torch.float64))
    torch.testing.assert_close(sae.to_jumprelu()(x), sae(x))
    sae.loss(x, 0.1).loss.backward()                                 # r_mag and b_gate carry b_mag's gradient
    assert sae.r_mag.grad.abs().sum() > 0 and sae.b_gate.grad.abs().sum() > 0


def test_tied_magnitude_bias_saves_and_loads(tmp_path):
    sae = _gated(mag_bias="tied")
    with torch.no_grad():
        sae.b_gate.normal_(0, 0.3)
        sae.r_mag.normal_(0, 0.3)
    _, tensors = sae_lens_state(sae)
    torch.testing.assert_close(tensors["b_mag"], torch.exp(sae.r_mag) * sae.b_gate)   # what SAELens reads
    back = load_sae(save_sae(sae, tmp_path / "tied"), dtype=torch.float64)
    assert back.mag_bias == "tied" and back.encoder_init == "transpose"
    x = torch.randn(8, 16, dtype=torch.float64)
    torch.testing.assert_close(back(x), sae(x))
    cfg, tensors = sae_lens_state(sae)
    tensors["b_mag"] = tensors["b_mag"] + 0.1                        # not what the tie says: refused, not dropped
    with pytest.raises(ValueError, match="'b_mag' is not exp.r_mag. . b_gate.*mag_bias='tied'"):
        sae_from_sae_lens_state(cfg, tensors)


def test_bad_options_name_the_parameter_and_the_allowed_values():
    with pytest.raises(ValueError, match="mag_bias='both'.*'free', 'tied'"):
        GatedSAE(8, 16, mag_bias="both")
    with pytest.raises(ValueError, match="mag_bias='tied'.*allowed mag_weights.*'r_mag', 'no_r_mag'"):
        GatedSAE(8, 16, mag_bias="tied", mag_weights="untied")
    with pytest.raises(ValueError, match="encoder_init='kaiming'.*" + ".*".join(map(repr, ENCODER_INITS))):
        GatedSAE(8, 16, encoder_init="kaiming")


def test_untied_magnitude_weights_start_as_the_gate_encoder_under_either_initialisation():
    for init in ENCODER_INITS:
        sae = _gated(mag_weights="untied", encoder_init=init)
        assert torch.equal(sae.W_mag, sae.W_gate) and sae.W_mag.data_ptr() != sae.W_gate.data_ptr()
