"""The training steps of saelib/fast (`training_loss`) give the model's dense `sae.loss`: loss terms,
codes, reconstruction and gradients, in float64, for every variant; sparse when sparse enough, a dense
fallback otherwise; bitwise deterministic on two threads."""
import pytest
import torch
import torch.nn.functional as F

from saelib import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from saelib.fast import SPARSE_MAX_DENSITY, training_loss
from saelib.fast import sparse as S
from saelib.fast.sparse import Support, densify, sparse_decode, support_above


def _loss_and_grads(sae, loss_fn, x, lam):
    sae.zero_grad(set_to_none=True)
    out = loss_fn(x, lam)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    return out, grads


def _compare(sae, x, lam, min_params=4, max_density=1.0, sparse=True):
    """training_loss(sae) (on this CPU, with max_density) against the dense sae.loss."""
    dense, g_dense = _loss_and_grads(sae, sae.loss, x, lam)
    fast, g_fast = _loss_and_grads(sae, training_loss(sae, "cpu", max_density=max_density), x, lam)
    assert not callable(dense._f)
    assert callable(fast._f) == sparse, "the sparse path was not taken" if sparse else "unexpectedly sparse"
    for term in ("loss", "reconstruction", "sparsity", "aux"):
        torch.testing.assert_close(getattr(fast, term), getattr(dense, term), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.x_hat, dense.x_hat, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.feature_max(), dense.f.detach().amax(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.f.detach(), dense.f.detach(), rtol=1e-10, atol=1e-12)
    assert g_fast.keys() == g_dense.keys() and len(g_dense) >= min_params
    for name in g_dense:
        torch.testing.assert_close(g_fast[name], g_dense[name], rtol=1e-9, atol=1e-12, msg=name)
    return dense


def _inputs(d_in=24, batch=96, seed=0):
    return torch.randn(batch, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("variant", ["standard", "april_update"])
def test_relu_fast_step_matches_dense(variant, sparse):
    torch.manual_seed(0)
    sae = ReLUSAE(24, 80, variant=variant).double()
    x = _inputs()
    with torch.no_grad():                           # a sparse code: each feature fires on ~10% of tokens
        sae.b_enc.copy_(-sae.pre_activations(x).quantile(0.9, dim=0))
        sae.b_dec.normal_(0, 0.01)
    out = _compare(sae, x, 0.3, max_density=1.0 if sparse else 0.0, sparse=sparse)
    density = (out.f != 0).double().mean().item()
    assert 0.02 < density < 0.4                     # the test exercises a genuinely sparse, non-empty code


def _jumprelu(kernel, penalty, bandwidth=0.2):
    torch.manual_seed(0)
    sae = JumpReLUSAE(24, 80, kernel=kernel, bandwidth=bandwidth, theta_init=1.0, penalty=penalty).double()
    with torch.no_grad():
        sae.log_threshold.add_(torch.randn(80, dtype=torch.float64) * 0.3)
        sae.b_dec.normal_(0, 0.1)
    return sae


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("kernel", ["rectangle", "triangular", "epanechnikov"])
@pytest.mark.parametrize("penalty", ["l0", "l1"])
def test_jumprelu_fast_step_matches_dense(kernel, penalty, sparse):
    sae = _jumprelu(kernel, penalty)
    x = _inputs() * 3
    with torch.no_grad():                           # entries inside the window, on both sides of theta
        u = sae.pre_activations(x) - sae.threshold
    assert ((u > -0.2) & (u < 0)).sum() > 50 and ((u > 0) & (u < 0.2)).sum() > 50
    out = _compare(sae, x, 0.5, max_density=1.0 if sparse else 0.0, sparse=sparse)
    assert 0.02 < (out.f != 0).double().mean().item() < 0.4


@pytest.mark.parametrize("penalty", ["l0", "l1"])
def test_jumprelu_adaptive_bandwidth_fast_step_matches_dense(penalty):
    sae = _jumprelu("rectangle", penalty, bandwidth="adaptive")
    with torch.no_grad():
        sae.bandwidths.copy_(torch.linspace(0.05, 0.4, 80, dtype=torch.float64))
    x = _inputs() * 3
    start = sae.bandwidths.clone()
    sae.eval()                                      # eval: the same bandwidths in both calls
    _compare(sae, x, 0.5)
    sae.train()                                     # train: each call adapts them, identically
    dense = sae.loss(x, 0.5)
    adapted = sae.bandwidths.clone()
    sae.bandwidths.copy_(start)
    fast = training_loss(sae, "cpu", max_density=1.0)(x, 0.5)
    assert callable(fast._f) and not torch.equal(adapted, start)
    torch.testing.assert_close(sae.bandwidths, adapted, rtol=0, atol=0)
    torch.testing.assert_close(fast.loss, dense.loss, rtol=1e-10, atol=1e-12)


def _gated(**options):
    torch.manual_seed(0)
    sae = GatedSAE(24, 80, **options).double()
    x = _inputs()
    with torch.no_grad():                           # gates open on ~10% of tokens; magnitudes differ
        sae.b_gate.copy_(-sae.pre_activations(x)[0].quantile(0.9, dim=0))
        if isinstance(getattr(sae, "r_mag", None), torch.nn.Parameter):
            sae.r_mag.normal_(0, 0.3)
        if sae.mag_bias == "free":
            sae.b_mag.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.01)
    return sae, x


GATED_OPTIONS = [{}, {"mag_weights": "no_r_mag"}, {"aux_decoder": "unfrozen"}, {"penalty": "decoder_norm"},
                 {"penalty": "decoder_norm", "penalty_decoder": "frozen"}, {"mag_bias": "tied"},
                 {"mag_bias": "tied", "mag_weights": "no_r_mag"}, {"encoder_init": "independent"}]


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("options", GATED_OPTIONS)
def test_gated_fast_step_matches_dense(options, sparse):
    sae, x = _gated(**options)
    out = _compare(sae, x, 0.3, max_density=1.0 if sparse else 0.0, sparse=sparse)
    assert 0.02 < (out.f != 0).double().mean().item() < 0.4


def test_untied_gated_trains_with_its_dense_loss():
    sae, x = _gated(mag_weights="untied")
    assert training_loss(sae, "cpu", max_density=1.0) == sae.loss
    _compare(sae, x, 0.3, sparse=False)


def test_gated_rescale_and_shift_fast_step_matches_dense():
    torch.manual_seed(0)
    relu = ReLUSAE(24, 80).double()
    x = _inputs()
    with torch.no_grad():
        relu.b_enc.copy_(-relu.pre_activations(x).quantile(0.9, dim=0))
    sae = GatedSAE.rescale_and_shift(relu)
    with torch.no_grad():
        sae.r_mag.normal_(0, 0.3)
    _compare(sae, x, 0.0, min_params=2)              # only r_mag and b_mag train
    _compare(sae, x, 0.0, min_params=2, max_density=0.0, sparse=False)


@pytest.mark.parametrize("aux_k", [None, 8])
def test_topk_fast_step_matches_dense(aux_k):
    torch.manual_seed(0)
    sae = TopKSAE(24, 80, k=6, aux_k=aux_k, aux_coeff=0.5, dead_tokens=50).double()
    x = _inputs()
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.tokens_since_fired[::3] = 100                  # a third of the latents dead
    sae.eval()                                             # (no dead-count updates between the two calls)
    out = _compare(sae, x, 0.0)
    assert (out.aux > 0) == (aux_k is not None)
    assert ((out.f != 0).sum(-1) <= 6).all()


def test_topk_fast_step_updates_dead_counts_like_dense():
    torch.manual_seed(0)
    sae = TopKSAE(24, 80, k=6, aux_k=8, dead_tokens=50).double()
    x = _inputs()
    sae.tokens_since_fired[::3] = 100
    start = sae.tokens_since_fired.clone()
    sae.loss(x)
    dense = sae.tokens_since_fired.clone()
    sae.tokens_since_fired.copy_(start)
    training_loss(sae, "cpu")(x, 0.0)
    assert torch.equal(sae.tokens_since_fired, dense) and not torch.equal(dense, start)


def test_jumprelu_gaussian_kernel_trains_with_its_dense_loss():
    sae = JumpReLUSAE(8, 16, kernel="gaussian", bandwidth=0.1, theta_init=5.0)
    loss_fn = training_loss(sae, "cpu", max_density=1.0)    # every pre-activation carries a gradient
    assert loss_fn == sae.loss and not callable(loss_fn(torch.randn(4, 8), 1.0)._f)


def test_other_devices_train_with_the_dense_loss_except_gated_and_topk():
    relu, jump = ReLUSAE(8, 16), JumpReLUSAE(8, 16)
    assert training_loss(relu, "cuda") == relu.loss and training_loss(jump, "cuda") == jump.loss
    gated = GatedSAE(8, 16)
    assert training_loss(gated, "cuda").max_density == 0.0          # GatedActivations, never sparse
    assert training_loss(relu, "cpu").max_density == SPARSE_MAX_DENSITY


def test_dense_codes_take_the_dense_step():
    sae = ReLUSAE(8, 32)                            # at init about half the features fire
    loss_fn = training_loss(sae, "cpu")
    assert not callable(loss_fn(torch.randn(64, 8), 0.1)._f)
    with torch.no_grad():
        assert not callable(loss_fn(torch.randn(64, 8), 0.1)._f)   # no graph wanted: always dense
    sparse = ReLUSAE(8, 32)
    with torch.no_grad():
        sparse.b_enc.fill_(-2.0)                    # few features fire: sparse, unless no graph is wanted
        assert not callable(training_loss(sparse, "cpu")(torch.randn(64, 8), 0.1)._f)
    assert callable(training_loss(sparse, "cpu")(torch.randn(64, 8), 0.1)._f)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cut", ["number", "vector"])
def test_support_through_numpy_is_torchs_support_bit_for_bit(dtype, cut):
    """support_above reads float32/float64 codes through numpy (faster); the pairs, their order and the
    dense-or-sparse decision are those of torch's (pi > cut).nonzero(), NaN and ties at the cut included."""
    g = torch.Generator().manual_seed(0)
    pi = torch.randn(300, 64, generator=g, dtype=dtype) - 1.5                  # ~7% above 0
    pi[3, 5], pi[7, :4] = float("nan"), 0.0                                     # NaN is never above; ties are not
    threshold = 0.0 if cut == "number" else (torch.randn(64, generator=g, dtype=dtype) * 0.1).clamp(max=0.05)
    if cut == "vector":
        pi[9, 10] = threshold[10]
    above = pi > threshold
    rows, cols = above.nonzero(as_tuple=True)
    for max_density in (1.0, 0.2, above.float().mean().item() * 0.99, 0.0):
        s = support_above(pi.clone().requires_grad_(), threshold, max_density)
        expected_dense = max_density == 0.0 or int(above.sum()) > max_density * above.numel() or \
            int(above[:256].sum()) > 2 * max_density * above[:256].numel()
        assert (s is None) == expected_dense, max_density
        if s is not None:
            assert torch.equal(s.rows, rows) and torch.equal(s.cols, cols) and s.batch == 300
            assert s.rows.dtype == s.cols.dtype == torch.int64


def test_per_sample_weights_grad_is_autograds_bit_for_bit():
    """The sparse decode's value gradient calls torch's embedding-bag backward kernel directly: the same
    bits as autograd through F.embedding_bag (empty bags included)."""
    g = torch.Generator().manual_seed(1)
    above = torch.rand(200, 96, generator=g) < 0.05
    above[[0, 17, 199]] = False
    rows, cols = above.nonzero(as_tuple=True)
    values, W = torch.randn(len(rows), generator=g), torch.randn(96, 40, generator=g)
    grad = torch.randn(200, 40, generator=g)
    offsets = Support(rows, cols, 200).offsets
    v = values.clone().requires_grad_()
    expected, = torch.autograd.grad(F.embedding_bag(cols, W, offsets, per_sample_weights=v, mode="sum"), v, grad)
    assert torch.equal(S.per_sample_weights_grad(grad, W, rows, cols, offsets), expected)


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
            out = training_loss(sae, "cpu")(x, 1.0)
            out.loss.backward()
            assert callable(out._f)
            grads.append(torch.cat([p.grad.flatten() for p in sae.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


def test_a_loss_set_on_the_instance_or_a_subclass_is_honoured():
    sae = ReLUSAE(8, 16)
    sae.loss = lambda x, c: "wrapped"
    assert training_loss(sae, "cpu")(torch.randn(4, 8), 0.1) == "wrapped"

    class Custom(ReLUSAE):
        def loss(self, x, sparsity_coeff):
            return "custom"
    assert training_loss(Custom(8, 16), "cpu")(torch.randn(4, 8), 0.1) == "custom"
