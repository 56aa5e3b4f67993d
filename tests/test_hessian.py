import pytest
import torch
from torch import nn

from mpqbench.errors import UserError
from mpqbench.hessian import hawq_policy, hutchinson_traces, layer_weights, sensitivity_table


def _mse(out, y):
    return ((out - y) ** 2).mean()


def _exact_block_traces(model, loss_fn, batches, names):
    """Tr(H_l)/n_l from the full Hessian of the sample-weighted mean loss (torch.autograd.functional)."""
    params = dict(model.named_parameters())
    targets = [params[n] for n in names]
    shapes = [p.shape for p in targets]
    sizes = [p.numel() for p in targets]
    total = sum(x.shape[0] for x, _ in batches)

    def loss_of(flat):
        chunks = torch.split(flat, sizes)
        override = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return sum(
            loss_fn(torch.func.functional_call(model, override, (x,)), y) * (x.shape[0] / total) for x, y in batches
        )

    flat = torch.cat([p.detach().reshape(-1) for p in targets])
    hess = torch.autograd.functional.hessian(loss_of, flat)
    out, start = {}, 0
    for n, size in zip(names, sizes):
        out[n] = float(hess[start : start + size, start : start + size].trace()) / size
        start += size
    return out


def test_linear_regression_trace_matches_exact_over_uneven_batches():
    torch.manual_seed(0)
    model = nn.Linear(12, 3)
    xs = torch.randn(50, 12) * torch.linspace(0.2, 3.0, 12)  # anisotropic → off-diagonal Hessian terms
    ys = torch.randn(50, 3)
    batches = [(xs[:30], ys[:30]), (xs[30:], ys[30:])]  # uneven: weights 0.6 / 0.4
    est = hutchinson_traces(model, _mse, batches, {"fc": model.weight}, tol=0.0, max_probes=200, seed=1)
    exact = _exact_block_traces(model, _mse, batches, ["weight"])["weight"]
    # Exact, by hand: MSE over 3 outputs → H = 2/3 · E[x xᵀ] ⊗ I_3, so Tr(H)/n = 2/3 · E‖x‖² · 3 / 36.
    by_hand = 2 / 3 * (xs**2).sum(dim=1).mean().item() * 3 / 36
    assert exact == pytest.approx(by_hand, rel=1e-5)
    assert est["fc"] == pytest.approx(exact, rel=0.05)


def test_two_layer_network_block_traces_match_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    x, y = torch.randn(40, 6), torch.randint(0, 4, (40,))
    batches = [(x, y)]
    loss_fn = nn.CrossEntropyLoss()
    names = {"0": model[0].weight, "2": model[2].weight}
    # One joint probe over both layers: z_0ᵀ(Hz)_0 carries zero-mean cross-layer terms, so the per-probe
    # spread is large in this tiny net (CV ≈ 1.7 for layer 0, 0.8 for layer 2): 1000 probes leave a
    # standard error near 5% and 2.5%; the tolerances are about two of those.
    est = hutchinson_traces(model, loss_fn, batches, names, tol=0.0, max_probes=1000, seed=0)
    exact = _exact_block_traces(model, loss_fn, batches, ["0.weight", "2.weight"])
    assert est["0"] == pytest.approx(exact["0.weight"], rel=0.12)
    assert est["2"] == pytest.approx(exact["2.weight"], rel=0.06)
    # The state of the model is restored.
    assert model.training and model[0].weight.grad is None


def test_stopping_rule():
    torch.manual_seed(0)
    # Diagonal Hessian: zᵀDz = Tr(D) for every Rademacher z, so the mean settles after the second probe.
    theta = nn.Parameter(torch.randn(20))
    d = torch.linspace(0.5, 4.0, 20)

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = theta

        def forward(self, x):
            return (0.5 * d * self.theta**2).sum() + 0 * x.sum()

    stats = {}
    est = hutchinson_traces(Quadratic(), lambda out, y: out, [(torch.zeros(1), torch.zeros(1))],
                            {"q": theta}, tol=1e-3, max_probes=50, stats=stats)
    assert stats["probes"] == 2 and stats["samples"] == 1
    assert est["q"] == pytest.approx(float(d.mean()), rel=1e-6)

    # A dense SPD matrix gives noisy probes: the cap is honoured exactly.
    a = torch.randn(20, 20)
    a = a @ a.T
    quad = nn.Module()
    quad.theta = nn.Parameter(torch.randn(20))
    quad.forward = lambda x: 0.5 * quad.theta @ a @ quad.theta + 0 * x.sum()
    stats = {}
    hutchinson_traces(quad, lambda out, y: out, [(torch.zeros(1), torch.zeros(1))], {"q": quad.theta},
                      tol=1e-9, max_probes=7, stats=stats)
    assert stats["probes"] == 7


def test_deterministic_for_seed_and_varies_with_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,)))]
    args = (model, nn.CrossEntropyLoss(), batches, {"a": model[0].weight, "b": model[2].weight})
    first = hutchinson_traces(*args, max_probes=5, tol=0.0, seed=3)
    assert hutchinson_traces(*args, max_probes=5, tol=0.0, seed=3) == first
    assert hutchinson_traces(*args, max_probes=5, tol=0.0, seed=4) != first


class _TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64, bias=False)
        self.b = nn.Linear(64, 64, bias=False)


def test_hawq_policy_cuts_the_flat_layer():
    torch.manual_seed(0)
    model = _TwoLayer()
    with torch.no_grad():
        model.b.weight.copy_(model.a.weight)  # identical weights → identical quantization error
    names = ["a", "b"]
    macs = {"a": 1_000_000, "b": 1_000_000}
    candidates = [2, 4, 8]
    traces = {"a": 1e-6, "b": 1e-2}  # b is 10^4 times more sensitive
    # Room for one 8-bit and one 4-bit layer, not two 8-bit ones.
    budget = (64 + 16) * 1_000_000 / 1e9
    assert hawq_policy(model, names, macs, candidates, budget, traces) == {"a": (4, 4), "b": (8, 8)}
    assert hawq_policy(model, names, macs, candidates, budget, {"a": 1e-2, "b": 1e-6}) == {"a": (8, 8), "b": (4, 4)}
    # A loose budget gives every layer the top bit-width; one below all-2-bit is a user error.
    assert hawq_policy(model, names, macs, candidates, 1.0, traces) == {"a": (8, 8), "b": (8, 8)}
    with pytest.raises(UserError, match="0.008"):
        hawq_policy(model, names, macs, candidates, 0.007, traces)


def test_hawq_policy_trades_macs_against_sensitivity():
    # Equal sensitivity per layer, but b has 4x the MACs: cutting b frees more budget.
    torch.manual_seed(1)
    model = _TwoLayer()
    with torch.no_grad():
        model.b.weight.copy_(model.a.weight)
    macs = {"a": 1_000_000, "b": 4_000_000}
    budget = (1 * 64 + 4 * 16) * 1_000_000 / 1e9  # a at 8 bits + b at 4 bits fits; the reverse does not
    assert hawq_policy(model, ["a", "b"], macs, [4, 8], budget, {"a": 1.0, "b": 1.0}) == {"a": (8, 8), "b": (4, 4)}


def test_sensitivity_table_uses_trace_times_error():
    torch.manual_seed(0)
    model = _TwoLayer()
    table = sensitivity_table(model, ["a", "b"], [2, 4], {"a": 2.0, "b": -1.0},
                              quant_error=lambda w, b: float(b))
    assert table.tolist() == [[4.0, 8.0], [0.0, 0.0]]  # negative trace → insensitive
    default = sensitivity_table(model, ["a"], [2, 3, 4, 8], {"a": 1.0})
    assert (default[0, :-1] > default[0, 1:]).all()  # more bits → smaller quantization error
    w = model.a.weight.detach()
    step = 2 * w.abs().mean() / (2**3 - 1) ** 0.5
    expected = ((torch.clamp(w / step, -8, 7).round() * step - w) ** 2).sum()
    assert default[0, 2] == pytest.approx(float(expected), rel=1e-6)


def test_unknown_layer_is_a_user_error():
    with pytest.raises(UserError, match="nope"):
        layer_weights(_TwoLayer(), ["a", "nope"])


def test_meter_counts_graph_build_and_each_probe():
    from mpqbench.cost import SearchCostMeter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,))), (torch.randn(8, 5), torch.randint(0, 3, (8,)))]
    meter, stats = SearchCostMeter("cpu"), {}
    hutchinson_traces(model, nn.CrossEntropyLoss(), batches, {"a": model[0].weight}, tol=0.0, max_probes=6,
                      meter=meter, stats=stats)
    assert stats == {"probes": 6, "samples": 24}
    assert meter.steps == 1 + 6 and meter.samples == 7 * 24
    # The forward alone is 5·7 + 7·3 = 56 MACs per sample; gradient and HVP steps each cost more than that.
    assert meter.macs_processed > 7 * 24 * 56
