"""The sparse training step (saelib/sparse.py) gives the dense step's loss, reconstruction, codes and
gradients: ReLU (both variants) and JumpReLU (compact kernels, L0 and L1 penalties), in float64."""
import pytest
import torch

from saelib import GatedSAE, JumpReLUSAE, ReLUSAE
from saelib.fast.sparse import Support, densify, sparse_decode, support_above


def _loss_and_grads(sae, x, lam, max_density):
    sae.sparse_max_density = max_density
    sae.zero_grad(set_to_none=True)
    out = sae.loss(x, lam)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    return out, grads


def _compare(sae, x, lam, min_params=4):
    dense, g_dense = _loss_and_grads(sae, x, lam, 0.0)
    sparse, g_sparse = _loss_and_grads(sae, x, lam, 1.0)
    assert not callable(dense._f) and callable(sparse._f), "the sparse path was not taken"
    for term in ("loss", "reconstruction", "sparsity", "aux"):
        torch.testing.assert_close(getattr(sparse, term), getattr(dense, term), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sparse.x_hat, dense.x_hat, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sparse.feature_max(), dense.f.detach().amax(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sparse.f, dense.f.detach(), rtol=1e-10, atol=1e-12)
    assert g_sparse.keys() == g_dense.keys() and len(g_dense) >= min_params
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], rtol=1e-9, atol=1e-12, msg=name)
    return dense


def _inputs(d_in=24, batch=96, seed=0):
    return torch.randn(batch, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("variant", ["standard", "april_update"])
def test_relu_sparse_step_matches_dense(variant):
    torch.manual_seed(0)
    sae = ReLUSAE(24, 80, variant=variant).double()
    x = _inputs()
    with torch.no_grad():                           # a sparse code: each feature fires on ~10% of tokens
        sae.b_enc.copy_(-sae.pre_activations(x).quantile(0.9, dim=0))
        sae.b_dec.normal_(0, 0.01)
    out = _compare(sae, x, 0.3)
    density = (out.f != 0).double().mean().item()
    assert 0.02 < density < 0.4                     # the test exercises a genuinely sparse, non-empty code


@pytest.mark.parametrize("kernel", ["rectangle", "triangular", "epanechnikov"])
@pytest.mark.parametrize("penalty", ["l0", "l1"])
def test_jumprelu_sparse_step_matches_dense(kernel, penalty):
    torch.manual_seed(0)
    sae = JumpReLUSAE(24, 80, kernel=kernel, bandwidth=0.2, theta_init=1.0, penalty=penalty).double()
    with torch.no_grad():
        sae.log_threshold.add_(torch.randn(80, dtype=torch.float64) * 0.3)
        sae.b_dec.normal_(0, 0.1)
    x = _inputs() * 3
    with torch.no_grad():                           # entries inside the window, on both sides of theta
        u = sae.pre_activations(x) - sae.threshold
    assert ((u > -0.2) & (u < 0)).sum() > 50 and ((u > 0) & (u < 0.2)).sum() > 50
    out = _compare(sae, x, 0.5)
    assert 0.02 < (out.f != 0).double().mean().item() < 0.4


@pytest.mark.parametrize("options", [
    {}, {"mag_weights": "no_r_mag"}, {"aux_decoder": "unfrozen"},
    {"penalty": "decoder_norm"}, {"penalty": "decoder_norm", "penalty_decoder": "frozen"}])
def test_gated_sparse_step_matches_dense(options):
    torch.manual_seed(0)
    sae = GatedSAE(24, 80, **options).double()
    x = _inputs()
    with torch.no_grad():                           # gates open on ~10% of tokens; magnitudes differ
        sae.b_gate.copy_(-sae.pre_activations(x)[0].quantile(0.9, dim=0))
        if hasattr(sae.r_mag, "normal_") and isinstance(sae.r_mag, torch.nn.Parameter):
            sae.r_mag.normal_(0, 0.3)
        sae.b_mag.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.01)
    out = _compare(sae, x, 0.3)
    assert 0.02 < (out.f != 0).double().mean().item() < 0.4


def test_gated_rescale_and_shift_sparse_step_matches_dense():
    torch.manual_seed(0)
    relu = ReLUSAE(24, 80).double()
    x = _inputs()
    with torch.no_grad():
        relu.b_enc.copy_(-relu.pre_activations(x).quantile(0.9, dim=0))
    sae = GatedSAE.rescale_and_shift(relu)
    with torch.no_grad():
        sae.r_mag.normal_(0, 0.3)
    _compare(sae, x, 0.0, min_params=2)              # only r_mag and b_mag train


def test_untied_gated_always_steps_densely():
    sae = GatedSAE(8, 16, mag_weights="untied")
    sae.sparse_max_density = 1.0
    assert not callable(sae.loss(torch.randn(4, 8), 1.0)._f)


def test_jumprelu_gaussian_kernel_always_steps_densely():
    sae = JumpReLUSAE(8, 16, kernel="gaussian", bandwidth=0.1, theta_init=5.0)
    sae.sparse_max_density = 1.0
    assert not callable(sae.loss(torch.randn(4, 8), 1.0)._f)     # every pre-activation carries a gradient


def test_dense_codes_take_the_dense_step():
    sae = ReLUSAE(8, 32)                            # at init about half the features fire
    assert not callable(sae.loss(torch.randn(64, 8), 0.1)._f)
    with torch.no_grad():
        assert not callable(sae.loss(torch.randn(64, 8), 0.1)._f)   # no graph wanted: always dense


def test_support_and_decode_helpers():
    pi = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    s = support_above(pi, 0.5, 1.0)
    assert s.rows.tolist() == [0, 0, 2] and s.cols.tolist() == [1, 3, 0] and s.offsets.tolist() == [0, 2, 2]
    assert support_above(pi, 0.5, 0.2) is None                      # 3 of 12 entries > 20%
    values = pi[s.rows, s.cols]
    torch.testing.assert_close(densify(values, s, 4), pi)
    W_dec = torch.randn(4, 5)
    torch.testing.assert_close(sparse_decode(values, s, W_dec), pi @ W_dec)
    empty = Support(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2)
    assert sparse_decode(torch.zeros(0), empty, W_dec).abs().sum() == 0


def test_sparse_step_is_deterministic_on_two_threads():
    """Every scatter in the sparse backward is a deterministic one (a plain theta[cols] gather is not:
    its backward accumulates from several threads in any order)."""
    x = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0)) / 8
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(3):
            torch.manual_seed(0)
            sae = JumpReLUSAE(64, 4096, theta_init=0.3, bandwidth=0.05)
            out = sae.loss(x, 1.0)
            out.loss.backward()
            assert callable(out._f)
            grads.append(torch.cat([p.grad.flatten() for p in sae.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
