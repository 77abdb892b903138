"""The successors of the 2024 recipes, term by term, on values small enough to compute by hand:
BatchTopK (Bussmann et al. 2024, arXiv 2412.06410): batch-wide selection, the running inference threshold,
its save/load and checkpoint/resume; JumpReLU options from Anthropic's Circuits Updates (January 2025) —
tanh sparsity penalty, pre-activation loss, straight-through gradients into the encoder — and Gemma Scope 2's
quadratic L0 penalty. The same terms against SAELens's training classes: tests/test_successors_saelens.py."""

import pytest
import torch

from saelib.io import load_sae, save_sae
from saelib.models.architectures import create_sae
from saelib.models.batchtopk import BatchTopKSAE
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
