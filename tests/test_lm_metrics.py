"""Language-model metrics: CE with the SAE spliced in, zero ablation, delta LM loss and loss recovered."""
import warnings

import pytest
import torch

from saelib.data.activations import kept_activations
from saelib.data.embedded_model import lm_loss
from saelib.data.normalization import estimate_scale
from saelib.data.registry import get_tokenizer, load_model, load_text_dataset, model_tokenize
from saelib.eval.lm_metrics import evaluate_lm, lm_reference, loss_recovered
from saelib.models.relu import ReLUSAE

# zero-ablating each of these raises the embedded model's CE (measured: resid ~6.9, block-0 hook_z ~1.3,
# block-0 MLP ~4.0, block-3 mlp_out ~0.06 nats); later attention/MLP sites matter far less
SITES = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.0.mlp.hook_post", "blocks.3.hook_mlp_out"]


@pytest.fixture(scope="module")
def model():
    return load_model("embedded")


@pytest.fixture(scope="module")
def tokens(model):
    return model_tokenize(model, load_text_dataset("embedded", "heldout", n_docs=120), model.cfg.n_ctx)[:24]


def exclude(model):
    tok = get_tokenizer(model)
    return (tok.bos_id, tok.pad_id)


def identity_sae(d_in: int) -> ReLUSAE:
    """A real ReLU SAE whose reconstruction is exactly its input: f = [ReLU(x), ReLU(-x)], x_hat = f+ - f-."""
    sae = ReLUSAE(d_in, 2 * d_in)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))        # [d_in, 2 d_in]
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))        # [2 d_in, d_in]
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def site_scale(model, tokens, hook_name):
    return estimate_scale(kept_activations(model, tokens[:8], hook_name, exclude(model)), "unit_mean_squared_norm")


@pytest.mark.parametrize("hook_name", SITES)
def test_identity_sae_changes_nothing(model, tokens, hook_name):
    scale = site_scale(model, tokens, hook_name)
    assert abs(scale - 1.0) > 0.05                              # normalisation really is switched on
    d_in = kept_activations(model, tokens[:1], hook_name, exclude(model)).shape[-1]
    result = evaluate_lm(model, identity_sae(d_in), hook_name, tokens, scale=scale, batch_size=10)
    assert abs(result.delta_lm_loss) < 1e-5
    assert result.loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert result.ce_zero > result.ce_clean + 0.02              # the site matters
    assert result.fvu < 1e-10 and result.l0 == pytest.approx(d_in, rel=0.01)
    assert result.n_spliced == int(((tokens != 1) & (tokens != 0)).sum())


@pytest.mark.parametrize("hook_name", ["blocks.2.hook_resid_pre", "blocks.0.attn.hook_z"])
def test_zero_reconstruction_recovers_nothing(model, tokens, hook_name):
    d_in = kept_activations(model, tokens[:1], hook_name, exclude(model)).shape[-1]
    sae = ReLUSAE(d_in, 32)
    with torch.no_grad():
        sae.W_dec.zero_()                                        # output exactly 0 = zero ablation
        sae.b_dec.zero_()
    result = evaluate_lm(model, sae, hook_name, tokens, scale=site_scale(model, tokens, hook_name))
    assert result.ce_sae == result.ce_zero
    assert result.loss_recovered == 0.0
    assert result.delta_lm_loss > 0.5


def test_clean_ce_is_the_models_loss_and_the_shortcut_is_exact(model, tokens):
    """CE_clean equals the embedded model's own loss on packed rows; CE_zero equals a full forward pass
    with the zero-ablation hook (evaluate_lm restarts the ablated runs at the hook's block)."""
    sae = identity_sae(model.cfg.d_model)
    result = evaluate_lm(model, sae, "blocks.3.hook_resid_mid", tokens, batch_size=7)
    assert result.ce_clean == pytest.approx(lm_loss(model, tokens), abs=1e-6)
    bos = get_tokenizer(model).bos_id

    def zero(act, hook):
        return torch.where((tokens != bos)[..., None], torch.zeros_like(act), act)

    with torch.no_grad():
        full = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[("blocks.3.hook_resid_mid", zero)])
    assert result.ce_zero == pytest.approx(full.item(), abs=1e-5)


@pytest.mark.parametrize("hook_name", ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post",
                                       "blocks.2.hook_resid_pre", "blocks.0.attn.hook_z"])
def test_restarting_after_the_hook_is_exact(model, tokens, hook_name):
    """The spliced run restarts from a stored clean activation (after the hook for a block's hook_resid_post, the
    last block included; at the hook's block otherwise): the SAE's CE is bitwise that of a whole forward pass with
    the splicing hook."""
    from saelib.eval import lm_metrics

    torch.manual_seed(0)
    d_in = kept_activations(model, tokens[:1], hook_name, exclude(model)).shape[-1]
    sae = ReLUSAE(d_in, 4 * d_in)
    scale = site_scale(model, tokens, hook_name)
    restarted = evaluate_lm(model, sae, hook_name, tokens, scale=scale, batch_size=7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_metrics, "_restart", lambda model, hook_name: None)       # whole forward passes
        whole = evaluate_lm(model, sae, hook_name, tokens, scale=scale, batch_size=7)
    assert restarted == whole
    if hook_name.endswith("hook_resid_post"):
        assert lm_metrics._restart(model, hook_name).layer == int(hook_name.split(".")[1]) + 1


@pytest.mark.parametrize("keep_resid", [True, False])
def test_a_shared_reference_gives_the_same_numbers(model, tokens, keep_resid):
    """lm_reference (the clean and zero runs, computed once per site) changes nothing in the result."""
    torch.manual_seed(0)
    hook = "blocks.1.hook_resid_post"
    sae = ReLUSAE(model.cfg.d_model, 4 * model.cfg.d_model)
    scale = site_scale(model, tokens, hook)
    plain = evaluate_lm(model, sae, hook, tokens, scale=scale, batch_size=7)
    ref = lm_reference(model, hook, tokens, batch_size=7, keep_resid=keep_resid)
    shared = evaluate_lm(model, sae, hook, tokens, scale=scale, batch_size=7, reference=ref)
    assert shared == plain
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_lm(model, sae, hook, tokens, scale=scale, batch_size=8, reference=ref)


def test_padding_is_not_scored(model, tokens):
    pad = get_tokenizer(model).pad_id
    padded = tokens[:4].clone()
    padded[:, 40:] = pad                                                    # right padding
    sae = identity_sae(model.cfg.d_model)
    result = evaluate_lm(model, sae, "blocks.0.hook_resid_post", padded)
    expected = evaluate_lm(model, sae, "blocks.0.hook_resid_post", tokens[:4, :40])
    assert result.n_predictions == expected.n_predictions == 4 * 39
    assert result.ce_clean == pytest.approx(expected.ce_clean, abs=1e-6)


def test_loss_recovered_undefined_raises_clearly():
    assert loss_recovered(2.0, 2.5, 4.0) == pytest.approx(0.75)
    for ce_zero in (2.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="zero-ablating the site does not raise the loss"):
            loss_recovered(2.0, 2.5, ce_zero)


def test_site_whose_ablation_is_harmless_raises(model, tokens):
    """Zero the first MLP's output weights: ablating blocks.0.hook_mlp_out then changes nothing."""
    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        clone = HookedTransformer(model.cfg)
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        clone.blocks[0].mlp.W_out.zero_()
        clone.blocks[0].mlp.b_out.zero_()
    with pytest.raises(ValueError, match="does not raise the loss"):
        evaluate_lm(clone.eval(), identity_sae(model.cfg.d_model), "blocks.0.hook_mlp_out", tokens[:4])
