"""Is the straight-through estimator a good gradient? Checks for the JumpReLU paper's §4 argument.

The loss of a JumpReLU SAE is piecewise constant in each threshold theta_i, so its gradient is zero almost
everywhere; but the *expected* loss E[L] is smooth in theta, and the STE (saelib/models/ste.py) is a kernel density
estimate of d E[L] / d theta. Everything here works with log_threshold (theta = exp(log_threshold)), the
parameter the optimiser actually moves:

    ste_threshold_gradients(sae, x, lam, B)      d L / d log_theta from the STE on each batch of B rows of x
    finite_difference_threshold_gradient(...)    (E L(log theta_i + h) - E L(log theta_i - h)) / 2h, each
                                                 feature perturbed on its own, on the same x (common random
                                                 numbers), with its standard error over tokens
    gradient_agreement(ste, fd, stderr)          correlation, slope and per-step signal-to-noise of the STE
    sparsity_gradient_paths(sae, x)              which parameters the L0 term reaches: only log_threshold

The finite difference is exact for one feature at a time: moving theta_i changes f_i only, so with
r = x - x_hat and a = f_i(perturbed) - f_i, the reconstruction changes by -2 a (r . d_i) + a^2 ||d_i||^2.
"""
from __future__ import annotations

import contextlib
import math

import torch

from saelib.validation import check_positive


@contextlib.contextmanager
def _evaluation_mode(sae, bandwidth):
    """eval() (no adaptive-bandwidth updates) and, optionally, one bandwidth for every feature."""
    was_training, saved = sae.training, sae.bandwidths.clone()
    sae.eval()
    if bandwidth is not None:
        check_positive("bandwidth", bandwidth)
        sae.bandwidths.fill_(float(bandwidth))
    try:
        yield
    finally:
        sae.bandwidths.copy_(saved)
        sae.train(was_training)


def _check_jumprelu(sae) -> None:
    if getattr(sae, "architecture", None) != "jumprelu":
        raise ValueError(f"sae must be a JumpReLUSAE, got {type(sae).__name__}")


def ste_threshold_gradients(sae, x: torch.Tensor, sparsity_coeff: float, batch_size: int, *,
                            bandwidth: float | None = None) -> torch.Tensor:
    """[n_batches, d_sae] the STE gradient of the batch-mean loss with respect to log_threshold, on each
    minibatch of x separately: what one training step sees. The rows' mean is the gradient over all of them
    (the rows that do not fill a last batch are dropped). `bandwidth` overrides the SAE's for this call only.
    """
    _check_jumprelu(sae)
    check_positive("batch_size", batch_size, integer=True)
    n = x.shape[0] // batch_size
    if n == 0:
        raise ValueError(f"batch_size={batch_size} is out of range; allowed: <= {x.shape[0]} (rows of x)")
    grads = []
    with _evaluation_mode(sae, bandwidth):
        for chunk in x[: n * batch_size].split(batch_size):
            sae.zero_grad(set_to_none=True)
            sae.loss(chunk, sparsity_coeff).loss.backward()
            grads.append(sae.log_threshold.grad.double().cpu().clone())
    sae.zero_grad(set_to_none=True)
    return torch.stack(grads)


@torch.no_grad()
def finite_difference_threshold_gradient(sae, x: torch.Tensor, sparsity_coeff: float, h: float, *,
                                         batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Central difference of the true mean loss over x in each log_threshold separately: (grad, stderr).

    grad [d_sae]:   (L(log theta_i + h) - L(log theta_i - h)) / 2h with every other parameter fixed;
    stderr [d_sae]: its standard error over the tokens of x (the per-token differences are independent).
    The same x is used on both sides (common random numbers), so only tokens whose pre-activation lies
    between theta_i e^-h and theta_i e^h contribute.
    """
    _check_jumprelu(sae)
    check_positive("h", h)
    check_positive("batch_size", batch_size, integer=True)
    theta = sae.threshold                                                   # [d_sae]
    lo, hi = theta * math.exp(-h), theta * math.exp(h)
    d_norm2 = sae.W_dec.pow(2).sum(-1)                                      # ||d_i||^2  [d_sae]
    s1 = torch.zeros(sae.d_sae, dtype=torch.float64)                        # sum of per-token differences
    s2 = torch.zeros(sae.d_sae, dtype=torch.float64)                        # sum of their squares
    for chunk in x.split(batch_size):
        z = sae.pre_activations(chunk)                                      # [batch, d_sae]
        f = z * (z > theta)                                                 # the SAE's own codes
        r = chunk - sae.decode(f)                                           # residual [batch, d_in]
        r_dot_d = r @ sae.W_dec.T                                           # r . d_i  [batch, d_sae]
        a_plus, a_minus = z * (z > hi) - f, z * (z > lo) - f                # change of f_i at theta_i e^{+-h}
        diff = -2 * (a_plus - a_minus) * r_dot_d + (a_plus ** 2 - a_minus ** 2) * d_norm2
        if sae.penalty == "l0":
            diff += sparsity_coeff * ((z > hi).to(z.dtype) - (z > lo).to(z.dtype))
        else:
            diff += sparsity_coeff * (a_plus - a_minus)
        diff = diff.double().cpu() / (2 * h)                                # per-token difference quotient
        s1 += diff.sum(0)
        s2 += diff.pow(2).sum(0)
    n = x.shape[0]
    mean = s1 / n
    stderr = ((s2 / n - mean ** 2).clamp_min(0) / max(1, n - 1)).sqrt()
    return mean, stderr


def sparsity_gradient_paths(sae, x: torch.Tensor) -> dict[str, float]:
    """Norm of the gradient of the sparsity term alone (lambda = 1) for every parameter of `sae`.

    For a JumpReLU SAE with the L0 penalty, d/dz H(z - theta) := 0, so only log_threshold gets a
    gradient: freeze the threshold (or fix theta = 0, "JumpReLU -> ReLU") and the L0 term trains nothing.
    """
    sae.zero_grad(set_to_none=True)
    with _evaluation_mode(sae, None) if getattr(sae, "architecture", None) == "jumprelu" else contextlib.nullcontext():
        out = sae.loss(x, 1.0)
        out.sparsity.backward()
    norms = {name: (0.0 if p.grad is None else float(p.grad.norm())) for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    return norms


def gradient_agreement(ste_batches: torch.Tensor, fd: torch.Tensor, fd_stderr: torch.Tensor) -> dict[str, float]:
    """How well per-batch STE gradients [n_batches, d_sae] match the finite difference [d_sae].

    Over the features with tokens inside the finite-difference window (fd_stderr > 0):
      correlation  Pearson correlation across features of the batch-mean STE with the finite difference
      slope        least-squares slope of the batch-mean STE on the finite difference, through the origin
                   (1: right on average; < 1: the kernel smooths the gradient away, a bias of large eps)
      step_snr     median over features of |mean| / rms of the per-batch STE: the fraction of one Adam step
                   (which moves by about lr * g / rms(g)) that points the right way on average
      features     how many features were compared
    """
    keep = fd_stderr > 0
    mean, ref = ste_batches.mean(0)[keep], fd[keep]
    rms = ste_batches[:, keep].pow(2).mean(0).sqrt()
    if int(keep.sum()) < 2:
        return {"correlation": math.nan, "slope": math.nan, "step_snr": math.nan, "features": int(keep.sum())}
    return {"correlation": float(torch.corrcoef(torch.stack([mean, ref]))[0, 1]),
            "slope": float((mean * ref).sum() / ref.pow(2).sum()),
            "step_snr": float((mean.abs() / rms.clamp_min(1e-30)).median()),
            "features": int(keep.sum())}


def perturb_thresholds(sae, spread: float = 0.7, seed: int = 0):
    """A copy of `sae` with every log_threshold moved by U(-spread, spread) (seeded).

    A trained SAE sits near a stationary point of the expected loss in each threshold, where the true
    gradient is ~0 and any estimator "agrees" with it only up to noise; moving the thresholds off it gives
    gradients of both signs and real size to compare against (JumpReLU paper §4's argument is about those)."""
    import copy

    _check_jumprelu(sae)
    check_positive("spread", spread)
    out = copy.deepcopy(sae)
    g = torch.Generator().manual_seed(seed)
    shift = (torch.rand(out.d_sae, generator=g, dtype=torch.float64) * 2 - 1) * spread
    with torch.no_grad():
        out.log_threshold.add_(shift.to(out.log_threshold.dtype).to(out.log_threshold.device))
    return out


@torch.no_grad()
def rectangle_window_terms(sae, x: torch.Tensor, sparsity_coeff: float,
                           bandwidth: float | None = None) -> dict[str, torch.Tensor]:
    """The rectangle-kernel STE of one batch x [B, d_in] as a finite difference over its own window.

    With window W_i = (theta_i - eps/2, theta_i + eps/2], r = x - x_hat (the SAE's own codes), d_i the decoder
    row, s_n = +1 for a token whose feature i is on (z > theta_i), -1 otherwise, each [d_sae], with respect
    to log_threshold (theta x d/dtheta), per-token means over the batch:

      fd          (L(theta_i + eps/2) - L(theta_i - eps/2)) / eps, the exact central difference of the batch
                  loss, feature by feature = sum_W [2 z r.d_i + s_n z^2 ||d_i||^2 - lambda] / (B eps)
      fd_l0       the sparsity term's part of fd: -lambda * |W| / (B eps) (L0 penalty)
      linearised  the same difference of the loss linearised in f_i around the current codes, with the jump
                  height z replaced by theta_i: sum_W [2 theta_i r.d_i - lambda] / (B eps). This is exactly what
                  eqs. 11-12 with K = rectangle compute (ste_threshold_gradients), to rounding.
      in_window   |W| per feature

    fd - linearised = sum_W [2 (z - theta) r.d_i + s_n z^2 ||d_i||^2] / (B eps): the first part is O(eps), the
    second cancels between the two halves of the window when the pre-activation density is smooth there.
    Only the L0 penalty is supported (the L1 penalty has no jump in its sparsity term).
    """
    _check_jumprelu(sae)
    if sae.penalty != "l0":
        raise ValueError(f"penalty={sae.penalty!r} is not supported here; allowed: 'l0'")
    eps = float(sae.bandwidths[0]) if bandwidth is None else float(bandwidth)
    check_positive("bandwidth", eps)
    theta = sae.threshold                                                   # [d_sae]
    z = sae.pre_activations(x)                                              # [B, d_sae]
    on = z > theta
    f = z * on
    r = x - sae.decode(f)                                                   # [B, d_in]
    r_dot_d = r @ sae.W_dec.T                                               # [B, d_sae]
    d_norm2 = sae.W_dec.pow(2).sum(-1)                                      # [d_sae]
    window = (z > theta - eps / 2) & (z <= theta + eps / 2)                 # [B, d_sae]
    w = window.to(z.dtype)
    sign = on.to(z.dtype) * 2 - 1
    n, lam = x.shape[0], float(sparsity_coeff)
    fd = (w * (2 * z * r_dot_d + sign * z.pow(2) * d_norm2 - lam)).sum(0) / (n * eps)
    linearised = (w * (2 * theta * r_dot_d - lam)).sum(0) / (n * eps)
    fd_l0 = -lam * w.sum(0) / (n * eps)
    return {"fd": theta * fd, "fd_l0": theta * fd_l0, "linearised": theta * linearised, "in_window": w.sum(0)}
