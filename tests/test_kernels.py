"""Kernels: values, support and integral; the pseudo-derivatives of eqs. 11-12 against hand computation."""
import math

import pytest
import torch

from saelib.models.kernels import KERNEL_SUPPORT, KERNELS, fraction_in_window, get_kernel
from saelib.models.ste import jumprelu, jumprelu_with_l0, step_l0


@pytest.fixture(autouse=True)
def float64_by_default():
    """Hand-computed values in float64; restored afterwards so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_integrates_to_one(name):
    u = torch.linspace(-12, 12, 2_400_001)
    integral = torch.trapezoid(get_kernel(name)(u), u).item()
    assert integral == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_support(name):
    half = KERNEL_SUPPORT[name]
    K = get_kernel(name)
    if math.isfinite(half):
        outside = torch.tensor([half + 1e-6, -half - 1e-6, 3.0, -7.0])
        assert torch.all(K(outside) == 0)
    else:
        assert torch.all(K(torch.tensor([3.0, -3.0])) != 0)
    assert K(torch.tensor([0.0])).item() > 0


def test_kernel_hand_values():
    u = torch.tensor([0.0, 0.25, -0.49, 0.5, 0.75])
    assert get_kernel("rectangle")(u).tolist() == [1, 1, 1, 0, 0]
    assert get_kernel("triangular")(u).tolist() == pytest.approx([1, 0.75, 0.51, 0.5, 0.25])
    assert get_kernel("epanechnikov")(u).tolist() == pytest.approx([0.75 * (1 - v * v) for v in u.tolist()])
    assert get_kernel("gaussian")(u).tolist() == pytest.approx([phi(v) for v in u.tolist()])
    assert get_kernel("quartic_gaussian")(u).tolist() == pytest.approx(
        [(3 - v * v) / 2 * phi(v) for v in u.tolist()])


def test_quartic_kernel_is_fourth_order():
    u = torch.linspace(-12, 12, 2_400_001)
    second_moment = torch.trapezoid(u * u * get_kernel("quartic_gaussian")(u), u).item()
    assert abs(second_moment) < 1e-4


def test_unknown_kernel_names_allowed_values():
    with pytest.raises(ValueError, match=r"kernel='box'.*rectangle"):
        get_kernel("box")


# ---------------------------------------------------------------- pseudo-derivatives (hand-computed)

def _grads(fn, z, theta, eps, kernel):
    z = z.clone().requires_grad_(True)
    theta = theta.clone().requires_grad_(True)
    out = fn(z, theta, eps, kernel)
    out.sum().backward()
    return out.detach(), z.grad, theta.grad


def test_jumprelu_forward_and_z_gradient():
    z = torch.tensor([[0.5, 0.0995, 0.1005, -1.0]])
    theta = torch.full((4,), 0.1)
    f, gz, _ = _grads(jumprelu, z, theta, 0.01, "rectangle")
    assert f.tolist() == [[0.5, 0.0, 0.1005, 0.0]]
    assert gz.tolist() == [[1.0, 0.0, 1.0, 0.0]]          # d/dz JumpReLU := H(z - theta)


def test_jumprelu_threshold_pseudo_derivative_rectangle():
    # eq. 11: d/dtheta JumpReLU_theta(z) = -(theta/eps) K((z - theta)/eps); the window |z - theta| < eps/2
    # is centred on the pre-activation at the threshold: 0.0995 and 0.1005 are inside, 0.5 and -1 are not.
    theta, eps = 0.1, 0.01
    z = torch.tensor([[0.5, 0.0995, 0.1005, -1.0], [0.104, 0.096, 0.1051, 0.0949]])
    _, _, gtheta = _grads(jumprelu, z, torch.full((4,), theta), eps, "rectangle")
    expected = [-(theta / eps) * n for n in (1, 2, 1, 0)]   # count of z in the window per column
    assert gtheta.tolist() == pytest.approx(expected)


def test_step_pseudo_derivative_gaussian_and_no_z_gradient():
    # eq. 12: d/dtheta H(z - theta) = -(1/eps) K((z - theta)/eps); d/dz H := 0. Mean over a batch of 2.
    theta, eps = torch.tensor([0.2, 0.3]), 0.05
    z = torch.tensor([[0.21, 0.1], [0.15, 0.3]])
    z_req = z.clone().requires_grad_(True)
    th = theta.clone().requires_grad_(True)
    l0 = step_l0(z_req, th, eps, "gaussian")
    l0.backward()
    assert l0.item() == pytest.approx(0.5)                  # (1 + 0) / 2 active features per token
    assert z_req.grad is None or torch.all(z_req.grad == 0)
    u = (z - theta) / eps
    expected = [-(1 / eps) * (phi(u[0, i].item()) + phi(u[1, i].item())) / 2 for i in range(2)]
    assert th.grad.tolist() == pytest.approx(expected)


def test_fused_gradient_is_sum_of_parts():
    torch.manual_seed(0)
    z = torch.randn(32, 8) * 0.05 + 0.1
    theta = torch.full((8,), 0.1)
    for kernel in KERNELS:
        zr, tr = z.clone().requires_grad_(True), theta.clone().requires_grad_(True)
        f, l0 = jumprelu_with_l0(zr, tr, 0.02, kernel)
        (f.pow(2).sum() + 3.0 * l0).backward()
        # separately: d/dtheta of f^2 sum and of 3*l0
        t1 = theta.clone().requires_grad_(True)
        jumprelu(z, t1, 0.02, kernel).pow(2).sum().backward()
        t2 = theta.clone().requires_grad_(True)
        (3.0 * step_l0(z, t2, 0.02, kernel)).backward()
        assert torch.allclose(tr.grad, t1.grad + t2.grad)


def test_fraction_in_window():
    z = torch.tensor([[0.1], [0.1004], [0.2], [0.0996]])
    frac = fraction_in_window(z, torch.tensor([0.1]), 0.001, "rectangle")
    assert frac.tolist() == pytest.approx([0.75])


def phi(v: float) -> float:
    return math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
