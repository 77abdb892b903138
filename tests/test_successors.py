"""The successors of the 2024 recipes, term by term, on values small enough to compute by hand:
BatchTopK (Bussmann et al. 2024, arXiv 2412.06410): batch-wide selection, the running inference threshold,
its save/load and checkpoint/resume; JumpReLU options from Anthropic's Circuits Updates (January 2025) —
tanh sparsity penalty, pre-activation loss, straight-through gradients into the encoder — and Gemma Scope 2's
quadratic L0 penalty. The same terms against SAELens's training classes: tests/test_successors_saelens.py."""

import math

import pytest
import torch

from saelib.io import load_sae, save_sae
from saelib.models.architectures import create_sae
from saelib.models.batchtopk import BatchTopKSAE
from saelib.models.jumprelu import JumpReLUSAE
from saelib.training.checkpoint import latest_checkpoint
from saelib.training.loop import TrainConfig, train_sae


def _identity_sae(cls, d: int = 4, **options):
    """An SAE with W_enc = W_dec = I and zero biases, so that pi = x."""
    sae = cls(d, d, **options).double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d, dtype=torch.float64))
        sae.W_dec.copy_(torch.eye(d, dtype=torch.float64))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


# ----------------------------------------------------------------------------- BatchTopK

X_BATCH = torch.tensor([[3.0, 0.5, -1.0, 2.0],
                        [0.1, 0.2, 4.0, 0.0]], dtype=torch.float64)


def test_batchtopk_keeps_the_k_times_b_largest_activations_of_the_whole_batch():
    sae = _identity_sae(BatchTopKSAE, k=1.5, threshold_lr=0.5)
    out = sae.loss(X_BATCH)                          # int(1.5 * 2) = 3 kept: 4, 3 and 2 (token 0 keeps two)
    expected = torch.tensor([[3.0, 0, 0, 2.0], [0, 0, 4.0, 0]], dtype=torch.float64)
    assert torch.equal(out.f, expected)
    # ||x - x_hat||^2 per token: (0.5^2 + 1^2) and (0.1^2 + 0.2^2); mean over the batch
    assert out.reconstruction.item() == pytest.approx((1.25 + 0.05) / 2, abs=1e-12)
    assert out.sparsity.item() == 0.0 and out.aux.item() == 0.0
    out.loss.backward()                              # gradients reach the encoder at the kept entries only
    assert torch.count_nonzero(sae.b_enc.grad) == 0  # kept entries reconstruct exactly (x_hat = x there)
    assert sae.W_dec.grad is not None


def test_batchtopk_threshold_is_a_running_average_of_the_smallest_kept_activation():
    sae = _identity_sae(BatchTopKSAE, k=1.5, threshold_lr=0.5)
    sae.loss(X_BATCH)                                    # smallest kept: 2.0 -> 0.5 * 0 + 0.5 * 2
    assert torch.allclose(sae.threshold, torch.full((4,), 1.0, dtype=torch.float64))
    sae.loss(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0.0]], dtype=torch.float64))   # kept: 1.0 (and zeros)
    assert torch.allclose(sae.threshold, torch.full((4,), 1.0, dtype=torch.float64))  # 0.5 * 1 + 0.5 * 1
    sae.loss(torch.zeros(2, 4, dtype=torch.float64))     # nothing positive: no update
    assert torch.allclose(sae.threshold, torch.full((4,), 1.0, dtype=torch.float64))
    sae.eval()                                           # no update outside training, nor without gradients
    sae.loss(X_BATCH * 10)
    sae.train()
    with torch.no_grad():
        sae.loss(X_BATCH * 10)
    assert torch.allclose(sae.threshold, torch.full((4,), 1.0, dtype=torch.float64))


def test_batchtopk_encodes_with_the_global_threshold_at_inference():
    sae = _identity_sae(BatchTopKSAE, k=1.5)
    with torch.no_grad():
        sae.threshold.fill_(1.0)
    f = sae.encode(X_BATCH)                              # ReLU(pi) * 1[pi > 1]: per token, not per batch
    assert torch.equal(f, torch.tensor([[3.0, 0, 0, 2.0], [0, 0, 4.0, 0]], dtype=torch.float64))
    assert torch.equal(sae.encode(X_BATCH[1:]), f[1:])   # a token's code no longer depends on the batch


def test_batchtopk_validation_names_the_parameter():
    for bad, name in ((dict(k=0), "k"), (dict(k=99), "k"), (dict(threshold_lr=1.5), "threshold_lr"),
                      (dict(aux_k=0), "aux_k"), (dict(normalize_decoder="yes"), "normalize_decoder")):
        with pytest.raises(ValueError, match=name):
            BatchTopKSAE(4, 8, **({"k": 2} | bad))


def test_batchtopk_auxk_reconstructs_the_residual_with_dead_latents():
    torch.manual_seed(0)
    sae = BatchTopKSAE(6, 12, k=2, aux_k=3, dead_tokens=4).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    assert sae.loss(x).aux.item() == 0.0                 # nothing dead yet
    with torch.no_grad():
        sae.tokens_since_fired.fill_(100)
    out = sae.loss(x)
    assert out.aux.item() > 0
    assert out.loss.item() == pytest.approx(out.reconstruction.item() + out.aux.item())


def test_batchtopk_trains_without_a_sparsity_coefficient():
    # like TopK, BatchTopK has no sparsity penalty: TrainConfig needs no sparsity_coeff for it
    torch.manual_seed(0)
    sae = BatchTopKSAE(8, 16, k=2)
    history = train_sae(sae, torch.randn(256, 8), TrainConfig(total_steps=4, batch_size=32, log_every=2,
                                                             progress=False, device="cpu"))
    assert history[-1]["sparsity_coeff"] == 0.0
    with pytest.raises(ValueError, match="sparsity_coeff is required"):
        train_sae(JumpReLUSAE(8, 16), torch.randn(64, 8), TrainConfig(total_steps=1, batch_size=32, progress=False,
                                                                      device="cpu"))


def test_batchtopk_save_load_keeps_the_threshold(tmp_path):
    torch.manual_seed(0)
    sae = create_sae("batchtopk", 6, 12, k=2.5, threshold_lr=0.1)
    with torch.no_grad():
        sae.threshold.fill_(0.375)
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert isinstance(loaded, BatchTopKSAE) and loaded.k == 2.5 and loaded.threshold_lr == 0.1
    x = torch.randn(5, 6)
    assert torch.equal(loaded.threshold, sae.threshold)
    assert torch.equal(loaded.encode(x), sae.encode(x))


def test_batchtopk_resume_restores_the_running_threshold_bitwise(tmp_path):
    data = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    cfg = dict(total_steps=12, batch_size=32, lr=3e-3, log_every=4, progress=False, checkpoint_every=4,
               sparsity_coeff=0.0)   # ignored by BatchTopK; the loop asks for it for every family but TopK

    def make(seed=0):
        torch.manual_seed(seed)
        return BatchTopKSAE(8, 24, k=3, threshold_lr=0.05, aux_k=4, dead_tokens=64)

    reference = make()
    ref_hist = train_sae(reference, data, TrainConfig(**cfg))
    assert reference.threshold[0] > 0

    class Crash(Exception):
        pass

    interrupted, calls = make(), [0]
    original = interrupted.loss

    def crashing(x, sparsity_coeff=0.0):
        calls[0] += 1
        if calls[0] == 10:
            raise Crash
        return original(x, sparsity_coeff)
    interrupted.loss = crashing
    with pytest.raises(Crash):
        train_sae(interrupted, data, TrainConfig(**cfg, checkpoint_dir=str(tmp_path)))
    assert latest_checkpoint(tmp_path).name == "step_000000008.json"
    resumed = make(seed=1)                               # other weights and a zero threshold until restored
    hist = train_sae(resumed, data, TrainConfig(**cfg, checkpoint_dir=str(tmp_path)), resume=True)
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert hist == ref_hist


# ----------------------------------------------------------------------------- JumpReLU: the 2025 options
# W_enc = I, W_dec = diag(2, 0.5) (decoder norms 2 and 0.5), zero biases, theta = 0.5, eps = 0.1, so pi = x:
#   token 0: pi = (1, 3)      both fire
#   token 1: pi = (0.52, 0.2) latent 0 fires, inside its kernel window (|0.52 - 0.5| < eps / 2); latent 1 off
#   token 2: pi = (0.3, 4)    latent 0 off, latent 1 fires
X_J = torch.tensor([[1.0, 3.0], [0.52, 0.2], [0.3, 4.0]], dtype=torch.float64)
THETA, EPS = 0.5, 0.1


def _jumprelu(**options):
    sae = JumpReLUSAE(2, 2, bandwidth=EPS, theta_init=THETA, **options).double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2, dtype=torch.float64))
        sae.W_dec.copy_(torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64)))
        sae.log_threshold.fill_(math.log(THETA))                   # exactly (the init rounds it to float32)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_tanh_penalty_by_hand():
    """Anthropic, January 2025: sum_i tanh(c f_i ||W_dec[i]||), batch mean; c = 0.25 here."""
    sae = _jumprelu(sparsity_mode="tanh", tanh_scale=0.25)
    out = sae.loss(X_J, 0.0)
    expected = (math.tanh(0.25 * 1 * 2) + math.tanh(0.25 * 3 * 0.5)        # token 0
                + math.tanh(0.25 * 0.52 * 2)                                # token 1
                + math.tanh(0.25 * 4 * 0.5)) / 3                            # token 2
    assert out.sparsity.item() == pytest.approx(expected, abs=1e-12)
    assert torch.equal(out.f, torch.tensor([[1.0, 3.0], [0.52, 0.0], [0.0, 4.0]], dtype=torch.float64))
    assert not sae.paper_recipe


def test_quadratic_penalty_by_hand():
    """Gemma Scope 2: per token (2 / L0*) (L0 - L0*)^2, batch mean; L0 per token = (2, 1, 1), L0* = 1."""
    sae = _jumprelu(sparsity_mode="quadratic", target_l0=1)
    out = sae.loss(X_J, 0.5)
    assert out.sparsity.item() == pytest.approx(2 / 1 * (1 + 0 + 0) / 3, abs=1e-12)
    assert out.loss.item() == pytest.approx(out.reconstruction.item() + 0.5 * 2 / 3, abs=1e-12)
    # gradient: d/dtheta_0 of the token-1 term (L0 1 -> 0 if theta_0 passes 0.52) through eq. 12's kernel:
    # 2/L0* * 2 (L0_1 - L0*) = 0 for token 1, so only the token at L0 = 2 could push, and it has no latent in
    # a window: the L0 term gives theta no gradient here
    sae.zero_grad()
    out.sparsity.backward()
    assert torch.count_nonzero(sae.log_threshold.grad) == 0


def test_quadratic_penalty_gradient_by_hand():
    """With L0* = 0.5: token 1 (L0 = 1, latent 0 in its window) contributes d/dL0 = 2/L0* * 2 (1 - 0.5) = 4,
    so dL/dtheta_0 = -(1/eps) K(0.2) * 4 / 3 and d/dlog theta_0 = theta_0 times that."""
    sae = _jumprelu(sparsity_mode="quadratic", target_l0=0.5)
    sae.loss(X_J, 0.0).sparsity.backward()
    assert sae.log_threshold.grad[0].item() == pytest.approx(THETA * -(1 / EPS) * 4 / 3, rel=1e-12)
    assert sae.log_threshold.grad[1].item() == 0.0


@pytest.mark.parametrize("on, expected", [("all", (0.3 * 0.5 + 0.2 * 2) / 3), ("dead", 0.3 * 0.5 / 3)])
def test_pre_activation_loss_by_hand(on, expected):
    """Anthropic, January 2025: lambda_P sum_i ReLU(theta_i - pi_i) ||W_dec[i]||, batch mean. Below
    threshold: token 1 latent 1 (0.3 short, norm 0.5), token 2 latent 0 (0.2 short, norm 2). With
    pre_act_on="dead" only latent 1 is dead here (it has not fired for dead_tokens tokens)."""
    sae = _jumprelu(pre_act_loss_coeff=2.0, pre_act_on=on, dead_tokens=10)
    if on == "dead":
        with torch.no_grad():
            sae.tokens_since_fired.copy_(torch.tensor([0, 10]))
    out = sae.loss(X_J, 0.0)
    assert out.aux.item() == pytest.approx(2.0 * expected, abs=1e-12)
    assert out.loss.item() == pytest.approx(out.reconstruction.item() + out.aux.item(), abs=1e-12)
    sae.zero_grad()
    out.aux.backward()
    # d/dpi = -lambda_P ||W_dec[i]|| / B below the threshold; d/dtheta = +that; d/dW_dec[i] along W_dec[i]
    grad_b1 = -2.0 * 0.5 / 3
    assert sae.b_enc.grad[1].item() == pytest.approx(grad_b1, abs=1e-12)
    assert sae.log_threshold.grad[1].item() == pytest.approx(-grad_b1 * THETA, abs=1e-12)
    assert sae.W_dec.grad[1, 1].item() == pytest.approx(2.0 * 0.3 / 3, abs=1e-12)
    if on == "dead":
        assert sae.b_enc.grad[0].item() == 0.0
        assert torch.equal(sae.tokens_since_fired, torch.tensor([0, 0]))   # latent 1 fired in this batch
    else:
        assert sae.b_enc.grad[0].item() == pytest.approx(-2.0 * 2 / 3, abs=1e-12)


@pytest.mark.parametrize("encoder_ste", [False, True])
def test_encoder_ste_gradients_by_hand(encoder_ste):
    """The jump's pseudo-derivative reaches pi only with encoder_ste: d/dpi H(pi - theta) = +(1/eps) K(u) and
    d/dpi JumpReLU = H + (theta/eps) K(u); only token 1's latent 0 is in a window (K = 1). theta's gradients
    (eqs. 11-12) are the same either way."""
    sae = _jumprelu(encoder_ste=encoder_ste)
    out = sae.loss(X_J, 1.0)
    assert out.sparsity.item() == pytest.approx((2 + 1 + 1) / 3, abs=1e-12)        # L0 mode (eq. 6)
    sae.zero_grad()
    out.sparsity.backward()                                      # batch-mean L0
    jump = (1 / EPS) / 3 if encoder_ste else 0.0
    torch.testing.assert_close(sae.b_enc.grad, torch.tensor([jump, 0.0], dtype=torch.float64))
    assert sae.log_threshold.grad[0].item() == pytest.approx(THETA * -(1 / EPS) / 3, rel=1e-12)

    sae.zero_grad()
    sae.loss(X_J, 0.0).f.sum().backward()                        # sum of the codes
    # d/dpi f summed over tokens: latent 0: token 0 (1) + token 1 (1 + theta/eps if encoder_ste); latent 1: 2
    expected = torch.tensor([2.0 + (THETA / EPS if encoder_ste else 0.0), 2.0], dtype=torch.float64)
    torch.testing.assert_close(sae.b_enc.grad, expected)
    assert sae.log_threshold.grad[0].item() == pytest.approx(THETA * -(THETA / EPS), rel=1e-12)


def test_default_jumprelu_is_the_paper_recipe_and_the_dense_successor_path_agrees_with_it():
    """The defaults keep the paper's loss (and saelib.fast's sparse step); the successor path's dense
    pseudo-derivatives (jumprelu_ste, heaviside_ste) give the same loss and gradients for sparsity_mode="l0"."""
    torch.manual_seed(0)
    sae = JumpReLUSAE(6, 24, bandwidth=0.05, theta_init=0.1).double()
    assert sae.paper_recipe and sae.sparsity_mode == "l0" and sae.penalty == "l0"
    assert JumpReLUSAE(6, 24, penalty="l1").sparsity_mode == "l1"
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    x = torch.randn(64, 6, dtype=torch.float64)
    grads = []
    for path in ("paper", "successor"):
        sae.zero_grad()
        if path == "paper":
            out = sae.loss(x, 0.3)
        else:
            pi, theta = sae.pre_activations(x), sae.threshold
            out = sae._successor_loss(x, pi, theta, sae.bandwidths.to(pi.dtype), 0.3)
        out.loss.backward()
        grads.append((out.loss.detach(), *(p.grad.clone() for p in sae.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(sae.log_threshold.grad) > 0


def test_successor_options_validation_names_the_parameter():
    for bad, name in ((dict(sparsity_mode="cubic"), "sparsity_mode"),
                      (dict(penalty="l1", sparsity_mode="tanh"), "penalty"),
                      (dict(sparsity_mode="quadratic"), "target_l0"),
                      (dict(sparsity_mode="quadratic", target_l0=0), "target_l0"),
                      (dict(sparsity_mode="quadratic", target_l0=99), "target_l0"),
                      (dict(sparsity_mode="tanh", target_l0=4), "target_l0"),
                      (dict(tanh_scale=0), "tanh_scale"),
                      (dict(pre_act_loss_coeff=-1), "pre_act_loss_coeff"),
                      (dict(pre_act_on="alive"), "pre_act_on"),
                      (dict(encoder_ste=1), "encoder_ste")):
        with pytest.raises(ValueError, match=name):
            JumpReLUSAE(4, 16, **bad)
    assert JumpReLUSAE(4, 16, penalty="l1", sparsity_mode="l1").penalty == "l1"


def test_successor_options_survive_save_and_load(tmp_path):
    sae = _jumprelu(sparsity_mode="quadratic", target_l0=1.5, pre_act_loss_coeff=3e-6, pre_act_on="dead",
                    dead_tokens=100, encoder_ste=True).float()
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert loaded.config() == sae.config()
    assert not loaded.paper_recipe


def test_saelib_fast_keeps_the_sparse_step_for_the_paper_recipe_only():
    from saelib.fast import training_loss

    assert training_loss(JumpReLUSAE(4, 16), "cpu") != JumpReLUSAE(4, 16).loss     # the sparse CPU step
    for options in (dict(sparsity_mode="tanh"), dict(sparsity_mode="quadratic", target_l0=2.0),
                    dict(encoder_ste=True), dict(pre_act_loss_coeff=1e-3)):
        sae = JumpReLUSAE(4, 16, **options)
        assert training_loss(sae, "cpu") == sae.loss, options               # the dense loss()
    sae = BatchTopKSAE(4, 16, k=2)
    assert training_loss(sae, "cpu") == sae.loss


def test_2025_recipe_trains_and_resumes_bitwise_with_its_dead_latent_counts(tmp_path):
    """The 2025 options through train_sae: finite, sparser than at the start, and a run interrupted after a
    checkpoint resumes to the same weights and dead-latent counts (a buffer in state_dict)."""
    data = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    cfg = dict(total_steps=12, batch_size=32, lr=3e-3, log_every=4, progress=False, checkpoint_every=4,
               sparsity_coeff=0.05)

    def make(seed=0):
        torch.manual_seed(seed)
        sae = JumpReLUSAE(8, 24, bandwidth=0.05, theta_init=0.05, sparsity_mode="tanh", encoder_ste=True,
                          pre_act_loss_coeff=1e-2, pre_act_on="dead", dead_tokens=64)
        with torch.no_grad():
            sae.b_enc[:6] = -20.0                        # six latents that never fire: the pre-act loss's target
        return sae

    reference = make()
    ref_hist = train_sae(reference, data, TrainConfig(**cfg))
    assert all(math.isfinite(h["loss"]) for h in ref_hist)
    assert int(reference.tokens_since_fired.max()) > 0

    class Crash(Exception):
        pass

    interrupted, calls = make(), [0]
    original = interrupted.loss

    def crashing(x, sparsity_coeff):
        calls[0] += 1
        if calls[0] == 10:
            raise Crash
        return original(x, sparsity_coeff)
    interrupted.loss = crashing
    with pytest.raises(Crash):
        train_sae(interrupted, data, TrainConfig(**cfg, checkpoint_dir=str(tmp_path)))
    resumed = make(seed=1)
    hist = train_sae(resumed, data, TrainConfig(**cfg, checkpoint_dir=str(tmp_path)), resume=True)
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert hist == ref_hist
