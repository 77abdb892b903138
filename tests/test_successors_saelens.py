"""The successors' loss terms and gradients against SAELens's training classes (an independent
implementation), in float64, on the same weights and inputs.

Conventions that differ, each documented here and tested on its own:
* SAELens trains the JumpReLU threshold theta directly (a float32 parameter, clamped at 0); saelib trains
  log theta (the JumpReLU paper's and Anthropic's parameterisation). Same theta -> same loss, and
  d/d(log theta) = theta * d/dtheta. SAELens's float32 threshold makes its threshold gradient float32.
* SAELens applies the pre-activation loss to dead latents only (its trainer's dead mask); Anthropic's
  January-2025 update writes it over all latents. saelib's `pre_act_on` chooses ("all", the default, or
  "dead"); "dead" matches SAELens when both call the same latents dead.
* AuxK (BatchTopK/TopK): SAELens fixes aux_k = d_in // 2 and scales the term by min(n_dead / aux_k, 1);
  saelib takes aux_k and aux_coeff from the constructor. Equal when aux_k = d_in // 2 and n_dead >= aux_k.
The CI installs sae-lens through the `bench` extra; without it these tests skip with that reason.
"""
import math

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="needs the optional sae-lens package (pip install 'saelib[bench]')")
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig  # noqa: E402
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig  # noqa: E402
from sae_lens.saes.sae import TrainStepInput  # noqa: E402

from saelib.interop import from_sae_lens, to_sae_lens  # noqa: E402
from saelib.io import load_sae  # noqa: E402
from saelib.models.batchtopk import BatchTopKSAE  # noqa: E402
from saelib.models.jumprelu import JumpReLUSAE  # noqa: E402

D_IN, D_SAE, BATCH = 6, 20, 16
F64 = dict(rtol=1e-10, atol=1e-12)


def _step(lens, x, coefficients=None, dead=None):
    return lens.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients or {},
                                                     dead_neuron_mask=dead, n_training_steps=0,
                                                     is_logging_step=False))


def _copy_weights(ours, lens):
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(lens, name).copy_(getattr(ours, name))


def _random_(sae, seed=0, decoder_norms=True):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        if not decoder_norms:                                   # unit-norm decoder rows
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    return sae


def _x(seed=1, n=BATCH):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assert_grads(ours, lens, names=("W_enc", "b_enc", "W_dec", "b_dec")):
    for name in names:
        torch.testing.assert_close(getattr(ours, name).grad, getattr(lens, name).grad, **F64, msg=name)


# ----------------------------------------------------------------------------- BatchTopK

def _batchtopk_pair(rescale: bool, k=2.5, lr=0.1):
    ours = _random_(BatchTopKSAE(D_IN, D_SAE, k=k, threshold_lr=lr, normalize_decoder=rescale).double(),
                    decoder_norms=not rescale)
    lens = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=k, topk_threshold_lr=lr,
                                                           dtype="float64", device="cpu",
                                                           rescale_acts_by_decoder_norm=rescale))
    _copy_weights(ours, lens)
    with torch.no_grad():
        ours.threshold.fill_(0.2)
        lens.topk_threshold.fill_(0.2)
    return ours, lens


@pytest.mark.parametrize("rescale", [False, True], ids=["raw-decoder-norms", "unit-norm-decoder"])
def test_batchtopk_training_step_matches_sae_lens(rescale):
    """Selection, reconstruction loss, gradients and the threshold update after two steps. SAELens's default
    rescales pre-activations by the decoder norms before selecting; with unit-norm decoder rows (saelib's
    default) that is the identity, and with rescale_acts_by_decoder_norm=False both select on pi."""
    ours, lens = _batchtopk_pair(rescale)
    for seed in (1, 2):
        x = _x(seed)
        for p in (*ours.parameters(), *lens.parameters()):
            p.grad = None
        out, ref = ours.loss(x), _step(lens, x)
        torch.testing.assert_close(out.f, ref.feature_acts, **F64)
        assert torch.count_nonzero(out.f) == int(2.5 * BATCH)
        torch.testing.assert_close(out.reconstruction, ref.losses["mse_loss"], **F64)
        torch.testing.assert_close(out.loss, ref.loss, **F64)
        out.loss.backward()
        ref.loss.backward()
        _assert_grads(ours, lens)
        torch.testing.assert_close(ours.threshold, lens.topk_threshold.expand(D_SAE), **F64)
    assert ours.threshold[0].item() != 0.2                         # it moved


def test_batchtopk_auxk_matches_sae_lens_when_aux_k_is_half_d_in():
    """Convention difference: SAELens's aux_k is d_in // 2 and its term is scaled by min(n_dead / aux_k, 1).
    With aux_k = d_in // 2, n_dead >= aux_k and the same coefficient, the two AuxK terms are equal."""
    ours, lens = _batchtopk_pair(rescale=False)
    ours.aux_k, ours.aux_coeff, ours.dead_tokens = D_IN // 2, 0.5, 10
    lens.cfg.aux_loss_coefficient = 0.5
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::2] = True                                               # 10 dead >= aux_k = 3
    with torch.no_grad():
        ours.tokens_since_fired.copy_(dead.long() * 100)
    x = _x(3)
    out, ref = ours.loss(x), _step(lens, x, dead=dead)
    torch.testing.assert_close(out.aux, ref.losses["auxiliary_reconstruction_loss"], **F64)
    out.loss.backward()
    ref.loss.backward()
    _assert_grads(ours, lens)


def test_batchtopk_export_and_import_through_sae_lens(tmp_path):
    """Ours -> SAELens: a JumpReLU SAE with the global threshold (SAELens's own inference form), same codes.
    SAELens BatchTopK (decoder-norm rescaling, non-unit norms) -> ours: same inference codes as the JumpReLU
    SAE SAELens itself saves for inference."""
    ours, _ = _batchtopk_pair(rescale=True)
    x = _x(4)
    lens_inference = to_sae_lens(ours)
    assert type(lens_inference).__name__ == "JumpReLUSAE"
    torch.testing.assert_close(lens_inference.encode(x), ours.encode(x), **F64)

    lens = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=3, dtype="float64",
                                                           device="cpu", rescale_acts_by_decoder_norm=True))
    _random_(lens)                                                 # decoder norms != 1
    with torch.no_grad():
        lens.topk_threshold.fill_(0.15)
    imported = from_sae_lens(lens)
    assert isinstance(imported, BatchTopKSAE) and imported.k == 3
    lens.save_inference_model(tmp_path / "lens")
    as_jumprelu = load_sae(tmp_path / "lens")                      # what SAELens ships for inference
    assert isinstance(as_jumprelu, JumpReLUSAE)
    torch.testing.assert_close(imported.encode(x), as_jumprelu.encode(x), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(imported(x), as_jumprelu(x), rtol=1e-9, atol=1e-12)
    assert math.isclose(imported.threshold[0].item(), 0.15)


# ----------------------------------------------------------------------------- JumpReLU, 2025 options

EPS = 0.05
MODES = {   # id: (our options, SAELens config fields)
    "step": (dict(), dict(jumprelu_sparsity_loss_mode="step")),
    "step+encoder_ste": (dict(encoder_ste=True), dict(jumprelu_sparsity_loss_mode="step", jumprelu_ste_to_input=True)),
    "tanh": (dict(sparsity_mode="tanh", tanh_scale=3.0),
             dict(jumprelu_sparsity_loss_mode="tanh", jumprelu_tanh_scale=3.0)),
    "tanh+encoder_ste+pre_act": (
        dict(sparsity_mode="tanh", tanh_scale=4.0, encoder_ste=True, pre_act_loss_coeff=0.7, pre_act_on="dead",
             dead_tokens=10),
        dict(jumprelu_sparsity_loss_mode="tanh", jumprelu_tanh_scale=4.0, jumprelu_ste_to_input=True,
             pre_act_loss_coefficient=0.7)),
    "quadratic": (dict(sparsity_mode="quadratic", target_l0=4.0),
                  dict(jumprelu_sparsity_loss_mode="quadratic", target_l0=4.0)),
    "quadratic+encoder_ste": (dict(sparsity_mode="quadratic", target_l0=2.5, encoder_ste=True),
                              dict(jumprelu_sparsity_loss_mode="quadratic", target_l0=2.5,
                                   jumprelu_ste_to_input=True)),
}


def _jumprelu_pair(ours_options, lens_fields, coeff):
    ours = _random_(JumpReLUSAE(D_IN, D_SAE, bandwidth=EPS, **ours_options).double())
    lens = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, dtype="float64", device="cpu",
                                                         jumprelu_bandwidth=EPS, l0_coefficient=coeff,
                                                         **lens_fields))
    _copy_weights(ours, lens)
    theta = (0.05 + 0.3 * torch.rand(D_SAE, generator=torch.Generator().manual_seed(7))).float()   # float32
    with torch.no_grad():
        lens.threshold.copy_(theta)                  # SAELens keeps theta itself, in float32
        ours.log_threshold.copy_(theta.double().log())   # saelib trains log theta (same theta up to 1 ulp)
    return ours, lens


@pytest.mark.parametrize("mode", list(MODES))
def test_jumprelu_2025_terms_and_gradients_match_sae_lens(mode):
    """Reconstruction, sparsity term (times lambda), pre-activation loss, the total, and the gradients of the
    encoder, decoder and biases in float64; the threshold's gradient through d/dtheta = d/dlog theta / theta
    (SAELens's float32 threshold: float32 tolerance)."""
    ours_options, lens_fields = MODES[mode]
    coeff = 0.37
    ours, lens = _jumprelu_pair(ours_options, lens_fields, coeff)
    x = _x(5, n=128)
    pi = ours.pre_activations(x).detach()
    in_window = ((pi - ours.threshold.detach()).abs() < EPS / 2).sum().item()
    assert in_window >= 5, "the test needs pre-activations inside the kernel window"
    dead = None
    if ours.pre_act_loss_coeff > 0:
        dead = torch.zeros(D_SAE, dtype=torch.bool)
        dead[1::3] = True
        with torch.no_grad():
            ours.tokens_since_fired.copy_(dead.long() * 10)
    out = ours.loss(x, coeff)
    ref = _step(lens, x, coefficients={"l0": coeff}, dead=dead)
    torch.testing.assert_close(out.f, ref.feature_acts, **F64)
    torch.testing.assert_close(out.reconstruction, ref.losses["mse_loss"], **F64)
    torch.testing.assert_close(coeff * out.sparsity, ref.losses["l0_loss"], **F64)
    if dead is not None:
        assert out.aux.item() > 0
        torch.testing.assert_close(out.aux, ref.losses["pre_act_loss"], **F64)
    else:
        assert "pre_act_loss" not in ref.losses and out.aux.item() == 0.0
    torch.testing.assert_close(out.loss, ref.loss, **F64)
    out.loss.backward()
    ref.loss.backward()
    _assert_grads(ours, lens)
    theta = ours.threshold.detach()
    grad_theta = ours.log_threshold.grad / theta                  # d/dtheta = d/dlog theta / theta
    assert torch.count_nonzero(lens.threshold.grad) > 0
    torch.testing.assert_close(grad_theta.float(), lens.threshold.grad, rtol=1e-5, atol=1e-6)


def test_pre_activation_loss_on_all_latents_is_sae_lens_with_every_latent_dead():
    """Convention: Anthropic's equation sums over all latents (saelib's default pre_act_on="all"); SAELens applies
    it to its trainer's dead latents only. The two agree when SAELens is told that every latent is dead."""
    ours, lens = _jumprelu_pair(dict(pre_act_loss_coeff=0.5), dict(pre_act_loss_coefficient=0.5), 0.1)
    x = _x(6, n=64)
    out = ours.loss(x, 0.1)
    ref = _step(lens, x, coefficients={"l0": 0.1}, dead=torch.ones(D_SAE, dtype=torch.bool))
    torch.testing.assert_close(out.aux, ref.losses["pre_act_loss"], **F64)
    out.loss.backward()
    ref.loss.backward()
    _assert_grads(ours, lens)
    partial = _step(lens, x, coefficients={"l0": 0.1}, dead=torch.arange(D_SAE) % 2 == 0)
    assert partial.losses["pre_act_loss"].item() < out.aux.item()   # SAELens's dead-only version is smaller
