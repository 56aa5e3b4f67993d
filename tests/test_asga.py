"""ASGA optimizer: every step checked against values computed by hand from the five equations.

Model for the hand computations (float64): pred = s·(X w) + b, L = mean((pred − t)²), so
∂L/∂w = 2 s Xᵀr / n, ∂L/∂b = 2 mean(r), ∂L/∂s = 2 mean(r · Xw), with r = pred − t.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from mpqbench.errors import UserError
from mpqbench.optim import ASGA, bn_stats_frozen

F64 = torch.float64  # every tensor and module below is float64 (explicitly: no global default dtype change)
TOL = dict(rtol=1e-12, atol=1e-12)

X = torch.tensor(
    [[1.0, -2.0, 0.5], [0.3, 1.2, -1.0], [2.0, 0.1, 0.4], [-1.5, 0.7, 1.1], [0.2, -0.3, 2.2], [1.1, 1.0, -0.6]],
    dtype=F64,
)
T = torch.tensor([0.5, -1.0, 2.0, 0.3, -0.7, 1.4], dtype=F64)
W0 = torch.tensor([0.2, -0.4, 0.3], dtype=F64)
B0 = torch.tensor(0.1, dtype=F64)
S0 = torch.tensor(1.3, dtype=F64)


def hand_loss_grads(w: Tensor, b: Tensor, s: Tensor) -> tuple[float, Tensor, Tensor, Tensor]:
    """(L, ∂L/∂w, ∂L/∂b, ∂L/∂s) by the closed-form formulas, no autograd."""
    xw = X @ w
    r = s * xw + b - T
    n = len(T)
    return float((r**2).mean()), 2 * s * X.T @ r / n, 2 * r.mean(), 2 * (r * xw).mean()


def hand_asga_direction(w, b, s, rho, beta, align):
    """Steps 1-4 of ASGA by hand: returns (d_w, d_b, L, L_p, ∂L/∂s, ∂L_p/∂s)."""
    loss, gw, gb, gs = hand_loss_grads(w, b, s)
    norm = math.sqrt(float(gw @ gw + gb * gb))
    ew, eb = rho * gw / norm, rho * gb / norm
    if align:
        ew, eb = ew - beta * gw, eb - beta * gb
    loss_p, gpw, gpb, gps = hand_loss_grads(w + ew, b + eb, s)
    if align:
        return (gw + gpw) / 2, (gb + gpb) / 2, loss, loss_p, gs, gps
    return gpw, gpb, loss, loss_p, gs, gps


def make_params():
    return nn.Parameter(W0.clone()), nn.Parameter(B0.clone())


def make_closure(w, b, s, counter=None):
    def closure():
        if counter is not None:
            counter.append(1)
        loss = ((s * (X @ w) + b - T) ** 2).mean()
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.01)])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("sam", [True, False])
def test_two_steps_match_hand_equations(sam, align, adaptive, momentum, weight_decay):
    lr, rho_init, rho_max, beta = 0.05, 0.02, 0.1, 0.002
    w, b = make_params()
    opt = ASGA([w, b], torch.optim.SGD, rho_init=rho_init, rho_max=rho_max, beta=beta, sam=sam, align=align,
               adaptive_rho=adaptive, lr=lr, momentum=momentum, weight_decay=weight_decay)
    closure = make_closure(w, b, S0)

    hw, hb, rho = W0.clone(), B0.clone(), rho_init
    buf_w = buf_b = None
    for step in range(2):
        if sam:
            dw, db, loss, loss_p, _, _ = hand_asga_direction(hw, hb, S0, rho, beta, align)
        else:
            loss, dw, db, _ = hand_loss_grads(hw, hb, S0)
        dw, db = dw + weight_decay * hw, db + weight_decay * hb
        buf_w = dw if buf_w is None else momentum * buf_w + dw
        buf_b = db if buf_b is None else momentum * buf_b + db
        hw, hb = hw - lr * buf_w, hb - lr * buf_b
        if sam and adaptive:
            rho = min(rho_max, math.log1p(max(loss_p - loss, 0.0)))
            if step == 0:  # the data make the adaptive radius differ from both ρ_init and ρ_max
                assert abs(rho - rho_init) > 1e-3 and rho < rho_max

        returned = opt.step(closure)
        assert returned == pytest.approx(loss, rel=1e-12)
        torch.testing.assert_close(w.detach(), hw, **TOL)
        torch.testing.assert_close(b.detach(), hb, **TOL)
        assert opt.rho == pytest.approx(rho, rel=1e-12)
        assert opt.last_loss == pytest.approx(loss, rel=1e-12)
        if sam:
            assert opt.last_perturbed_loss == pytest.approx(loss_p, rel=1e-12)
            assert opt.last_gap == pytest.approx(loss_p - loss, rel=1e-9)
        else:
            assert opt.last_perturbed_loss is None and opt.last_gap is None
    assert opt.steps == 2


def test_align_off_equals_reference_sam_on_quadratic():
    """SAM by hand on f(θ) = ½ θᵀAθ − cᵀθ split over two parameters: θ ← θ − lr ∇f(θ + ρ ∇f/‖∇f‖)."""
    a = torch.tensor(
        [[3.0, 0.5, 0.0, 0.2], [0.5, 2.0, 0.1, 0.0], [0.0, 0.1, 1.0, 0.3], [0.2, 0.0, 0.3, 4.0]], dtype=F64
    )
    c = torch.tensor([1.0, -2.0, 0.5, 0.7], dtype=F64)
    p1, p2 = nn.Parameter(torch.tensor([0.3, -0.2], dtype=F64)), nn.Parameter(torch.tensor([1.0, 0.4], dtype=F64))
    lr, rho = 0.1, 0.07
    opt = ASGA([p1, p2], rho_init=rho, beta=0.5, align=False, adaptive_rho=False, lr=lr)

    def closure():
        theta = torch.cat([p1, p2])
        loss = 0.5 * theta @ a @ theta - c @ theta
        loss.backward()
        return loss

    theta = torch.cat([p1, p2]).detach().clone()
    for _ in range(3):
        g = a @ theta - c
        g_p = a @ (theta + rho * g / g.norm()) - c
        theta = theta - lr * g_p
        opt.step(closure)
        torch.testing.assert_close(torch.cat([p1, p2]).detach(), theta, **TOL)
    assert opt.rho == rho


def bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 1)).to(F64)


@pytest.mark.parametrize("sam", [True, False])
def test_zero_radius_and_beta_equal_plain_sgd(sam):
    model, ref = bn_mlp(), bn_mlp()
    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt = ASGA(model.parameters(), model=model, rho_init=0.0, rho_max=0.0, beta=0.0, sam=sam, **kwargs)
    ref_opt = torch.optim.SGD(ref.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randn(8, 3, generator=gen, dtype=F64), torch.randn(8, 1, generator=gen, dtype=F64)

        def closure():
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        ref_opt.zero_grad()
        ((ref(x) - y) ** 2).mean().backward()
        ref_opt.step()
    for (name, got), want in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(got, want, **TOL, msg=name)
    assert opt.rho == 0.0


def test_rho_rule_with_scripted_losses():
    """ρ_{t+1} = min(ρ_max, ln(1 + max(h, 0))), h = L_p − L, including the clip and h < 0."""
    w, b = make_params()
    opt = ASGA([w, b], rho_init=0.05, rho_max=0.1, lr=0.01)
    script = [(1.0, 1.05), (1.0, 1.5), (2.0, 1.0), (1.0, 1.001), (3.0, float("nan"))]
    expected_rho = [math.log(1.05), 0.1, 0.0, math.log(1.001), math.log(1.001)]  # non-finite h keeps ρ
    losses = iter(v for pair in script for v in pair)

    def closure():
        ((X @ w + b - T) ** 2).mean().backward()
        return torch.tensor(next(losses), dtype=F64)

    for (loss, loss_p), rho in zip(script, expected_rho):
        opt.step(closure)
        assert opt.last_loss == loss
        assert opt.last_perturbed_loss == loss_p or math.isnan(loss_p)
        assert opt.rho == pytest.approx(rho, rel=1e-12, abs=1e-15)

    fixed = ASGA([w, b], rho_init=0.05, adaptive_rho=False, lr=0.01)
    losses = iter([1.0, 1.5])
    fixed.step(closure)
    assert fixed.rho == 0.05 and fixed.last_gap == 0.5


def test_bn_running_stats_change_only_in_clean_pass():
    model = bn_mlp()
    x, y = torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=F64), torch.zeros(16, 1, dtype=F64)
    clean = copy.deepcopy(model).train()
    clean(x)
    want = clean[1]

    def run(with_model: bool) -> nn.BatchNorm1d:
        m = copy.deepcopy(model).train()
        opt = ASGA(m.parameters(), model=m if with_model else None, rho_init=0.5, lr=0.1)

        def closure():
            loss = ((m(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        return m[1]

    got = run(with_model=True)
    torch.testing.assert_close(got.running_mean, want.running_mean, **TOL)
    torch.testing.assert_close(got.running_var, want.running_var, **TOL)
    assert int(got.num_batches_tracked) == 1
    unfrozen = run(with_model=False)  # control: without model= the perturbed pass updates the stats too
    assert int(unfrozen.num_batches_tracked) == 2
    assert not torch.allclose(unfrozen.running_mean, want.running_mean, rtol=1e-6, atol=1e-9)


def test_bn_stats_frozen_restores_cumulative_average():
    bn = nn.BatchNorm1d(3, momentum=None).to(F64).train()
    bn(torch.randn(4, 3, dtype=F64))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with bn_stats_frozen(bn):
        out = bn(torch.randn(4, 3, dtype=F64) * 5 + 2)
        assert torch.allclose(out.mean(0), torch.zeros(3, dtype=F64), atol=1e-12)  # still normalises by batch stats
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("mode", ["mean", "clean", "perturbed"])
def test_extra_param_grad_modes(mode):
    rho, beta, lr = 0.02, 0.002, 0.05
    w, b = make_params()
    s = nn.Parameter(S0.clone())
    opt = ASGA([w, b], rho_init=rho, beta=beta, lr=lr)
    opt.step(make_closure(w, b, s), extra_params=[s], extra_grad=mode)

    dw, db, _, _, gs, gps = hand_asga_direction(W0, B0, S0, rho, beta, align=True)
    want = {"mean": (gs + gps) / 2, "clean": gs, "perturbed": gps}[mode]
    assert abs(float(gs - gps)) > 1e-4  # the three modes are distinguishable on these data
    torch.testing.assert_close(s.grad, want, **TOL)
    assert torch.equal(s.detach(), S0)  # extra params are not stepped
    torch.testing.assert_close(w.detach(), W0 - lr * dw, **TOL)
    torch.testing.assert_close(b.detach(), B0 - lr * db, **TOL)


def test_extra_param_grad_without_sam_is_clean_gradient():
    w, b = make_params()
    s = nn.Parameter(S0.clone())
    opt = ASGA([w, b], sam=False, lr=0.05)
    opt.step(make_closure(w, b, s), extra_params=[s], extra_grad="perturbed")
    torch.testing.assert_close(s.grad, hand_loss_grads(W0, B0, S0)[3], **TOL)


@pytest.mark.parametrize("sam,calls", [(True, 2), (False, 1)])
def test_closure_call_count(sam, calls):
    w, b = make_params()
    counter: list[int] = []
    opt = ASGA([w, b], sam=sam, lr=0.1)
    opt.step(make_closure(w, b, S0, counter))
    assert len(counter) == calls


def test_zero_gradient_gives_no_perturbation_and_no_nan():
    w, b = make_params()
    opt = ASGA([w, b], lr=0.1)

    def closure():
        loss = (0.0 * w).sum() + 0.0 * b + 2.0
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.equal(w.detach(), W0) and torch.equal(b.detach(), B0)
    assert opt.last_gap == 0.0 and opt.rho == 0.0


def test_state_dict_round_trip_resumes_identically():
    w, b = make_params()
    opt = ASGA([w, b], lr=0.05, momentum=0.9)
    closure = make_closure(w, b, S0)
    for _ in range(2):
        opt.step(closure)
    saved_params, saved_state = (w.detach().clone(), b.detach().clone()), copy.deepcopy(opt.state_dict())
    opt.step(closure)

    w2, b2 = nn.Parameter(saved_params[0]), nn.Parameter(saved_params[1])
    opt2 = ASGA([w2, b2], lr=0.05, momentum=0.9)
    opt2.load_state_dict(saved_state)
    assert opt2.rho == saved_state["asga"]["rho"] and opt2.steps == 2
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    opt2.step(make_closure(w2, b2, S0))
    torch.testing.assert_close(w2.detach(), w.detach(), **TOL)
    assert opt2.rho == opt.rho


def test_lr_scheduler_drives_base_optimizer():
    w, b = make_params()
    opt = ASGA([w, b], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(make_closure(w, b, S0))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_invalid_arguments():
    w, b = make_params()
    with pytest.raises(UserError, match="rho_init"):
        ASGA([w, b], rho_init=-0.1, lr=0.1)
    opt = ASGA([w, b], lr=0.1)
    with pytest.raises(UserError, match="extra_grad"):
        opt.step(make_closure(w, b, S0), extra_grad="average")
    with pytest.raises(ValueError, match="overlap"):
        opt.step(make_closure(w, b, S0), extra_params=[w])
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def _quadratic_run(rule: str, steps: int = 60) -> tuple[list[float], list[float]]:
    """ρ_t and ‖g‖ over ``steps`` ASGA steps on L(θ) = ½ θᵀAθ + cᵀθ with lr = 0, so θ stays where ‖g‖ < 1."""
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=F64))
    a = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=F64)
    c = torch.tensor([0.1, 0.05], dtype=F64)

    def closure():
        loss = 0.5 * theta @ a @ theta + c @ theta
        loss.backward()
        return loss.detach()

    opt = ASGA([theta], rho_init=0.05, rho_max=0.1, beta=0.001, rho_rule=rule, lr=0.0)
    rhos, norms = [], []
    for _ in range(steps):
        opt.step(closure)
        rhos.append(opt.rho)
        norms.append(opt.last_grad_norm)
    return rhos, norms


def test_published_rho_collapses_on_a_quadratic_and_probe_does_not():
    g = (torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=F64) @ torch.tensor([0.3, -0.2], dtype=F64)
         + torch.tensor([0.1, 0.05], dtype=F64))
    gnorm = float(g.norm())
    rhos, norms = _quadratic_run("published")
    assert norms[0] == pytest.approx(gnorm, rel=1e-12) and gnorm < 1
    # first step by hand: h = L(θ+ε) − L(θ) with ε = ρ0 g/‖g‖ − β g, then ρ1 = ln(1 + h)
    a = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=F64)
    c = torch.tensor([0.1, 0.05], dtype=F64)
    th = torch.tensor([0.3, -0.2], dtype=F64)
    eps = 0.05 * g / gnorm - 0.001 * g
    loss = lambda t: float(0.5 * t @ a @ t + c @ t)  # noqa: E731
    assert rhos[0] == pytest.approx(math.log1p(loss(th + eps) - loss(th)), rel=1e-10)
    # each step multiplies ρ by about ‖g‖ < 1: geometric collapse, then absorbed at 0 once h < 0
    assert rhos[5] < 0.05 * gnorm ** 5
    assert rhos[-1] == 0.0  # absorbed: at ρ = 0 the gap is −β‖g‖² < 0
    probe, _ = _quadratic_run("probe")
    # the probe rule reads the gap at ρ0: ρ settles near ln(1 + ρ0‖g‖ + ½ρ0²·gᵀAg/‖g‖² ...) and stays there
    assert min(probe[10:]) > 0.5 * 0.05 * gnorm
    assert max(probe[10:]) - min(probe[10:]) < 1e-3
    assert probe[-1] > 0.03


def test_probe_rule_by_hand_and_bounds():
    w, b = make_params()
    opt = ASGA([w, b], rho_init=0.05, rho_max=0.1, beta=0.001, rho_rule="probe", rho_min=0.002, lr=0.01)
    script = iter([1.0, 1.01, 1.0, 1.0 - 1.0, 1.0, 3.0])

    def closure():
        ((X @ w + b - T) ** 2).mean().backward()
        return torch.tensor(next(script), dtype=F64)

    opt.step(closure)  # h = 0.01 at ρ0 = 0.05: h̃ = (h + β‖g‖²)·ρ0/ρ0
    g2 = opt.last_grad_norm ** 2
    assert opt.rho == pytest.approx(math.log1p(0.01 + 0.001 * g2), rel=1e-10)
    rho1 = opt.rho
    opt.step(closure)  # h = −1 < 0: clipped to ρ_min, not 0
    assert opt.rho == 0.002
    opt.step(closure)  # h = 2 at ρ_min: rescaled by ρ0/ρ_min = 25 → clipped at ρ_max
    assert opt.rho == 0.1
    assert rho1 > 0
    with pytest.raises(UserError):
        ASGA([w, b], rho_rule="nope", lr=0.1)
    with pytest.raises(UserError):
        ASGA([w, b], rho_rule="probe", rho_min=0.0, lr=0.1)
