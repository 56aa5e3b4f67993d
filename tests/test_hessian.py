import numpy as np
import pytest
import torch
from torch import nn

from mpqbench.errors import UserError
from baselines.hawq import hawq_policy, hutchinson_traces, layer_weights, sensitivity_table


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
    est = hutchinson_traces(model, loss_fn, batches, names, tol=0.0, max_probes=1000, seed=0, probe="joint")
    exact = _exact_block_traces(model, loss_fn, batches, ["0.weight", "2.weight"])
    assert est["0"] == pytest.approx(exact["0.weight"], rel=0.12)
    assert est["2"] == pytest.approx(exact["2.weight"], rel=0.06)
    # The state of the model is restored.
    assert model.training and model[0].weight.grad is None


class _Quadratic(nn.Module):
    """loss = ½ θᵀAθ over two parameter blocks θ = (p, q): the Hessian is A, exactly, everywhere."""

    def __init__(self, a: torch.Tensor, n_p: int):
        super().__init__()
        self.a = a
        self.p = nn.Parameter(torch.randn(n_p, dtype=a.dtype))
        self.q = nn.Parameter(torch.randn(a.shape[0] - n_p, dtype=a.dtype))

    def forward(self, x):
        theta = torch.cat([self.p, self.q])
        return 0.5 * theta @ self.a @ theta + 0 * x.sum()


def _quadratic(seed: int = 0, n_p: int = 6, n_q: int = 4, cross: float = 0.15) -> _Quadratic:
    # p's block is dominated by its diagonal (low-variance probes), q's is dense (high variance); the
    # cross-block terms are non-zero. float64 throughout so the hand replay below matches to 1e-12.
    g = torch.Generator().manual_seed(seed)
    n = n_p + n_q
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = cross * (m + m.T)
    a[:n_p, :n_p] = torch.diag(torch.linspace(1.0, 3.0, n_p, dtype=torch.float64)) + 0.0075 * (m + m.T)[:n_p, :n_p]
    a[n_p:, n_p:] = 0.9 * (m + m.T)[n_p:, n_p:] + 2 * torch.eye(n_q, dtype=torch.float64)
    return _Quadratic(a, n_p)


def _run(model, probe="joint", **kw):
    stats = {}
    est = hutchinson_traces(model, lambda out, y: out, [(torch.zeros(1), torch.zeros(1))],
                            {"p": model.p, "q": model.q}, stats=stats, probe=probe, **kw)
    return est, stats


def _replay(model, *, tol, min_probes, max_probes, seed, probe="joint"):
    """The estimator and its stopping rule by hand: z from the same generator (one draw per block per
    probe), the sample of block l = z_lᵀ(A_{l,S} z_S) over the still-active blocks S (``probe="joint"``)
    or z_lᵀA_ll z_l (``probe="layer"``), the rule s_l/√n_l ≤ tol·|mean_l| once n_l ≥ min_probes."""
    a = model.a
    sl = {"p": slice(0, model.p.numel()), "q": slice(model.p.numel(), a.shape[0])}
    g = torch.Generator().manual_seed(seed)
    samples = {"p": [], "q": []}
    active = ["p", "q"]
    for _ in range(max_probes):
        if not active:
            break
        z = {k: (torch.randint(0, 2, (sl[k].stop - sl[k].start,), generator=g) * 2 - 1).double() for k in ("p", "q")}
        coupled = active if probe == "joint" else None
        hz = {k: sum(a[sl[k], sl[j]] @ z[j] for j in (coupled or [k])) for k in active}
        for k in active:
            samples[k].append(float(z[k] @ hz[k]))
        still = []
        for k in active:
            x = np.array(samples[k])
            se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.inf
            if not (tol > 0 and len(x) >= min_probes and se <= tol * abs(x.mean())):
                still.append(k)
        active = still
    n = {k: sl[k].stop - sl[k].start for k in sl}
    traces = {k: float(np.mean(samples[k])) / n[k] for k in sl}
    stderr = {k: float(np.std(samples[k], ddof=1) / np.sqrt(len(samples[k]))) / n[k] for k in sl}
    return traces, {k: len(v) for k, v in samples.items()}, stderr


def test_stopping_rule_stops_each_layer_as_replayed_by_hand():
    torch.manual_seed(0)
    model = _quadratic()
    est, stats = _run(model, tol=0.05, min_probes=10, max_probes=2000, seed=7)
    traces, probes, stderr = _replay(model, tol=0.05, min_probes=10, max_probes=2000, seed=7)
    assert stats["layer_probes"] == probes
    # The rule triggered for both blocks, at different counts: the low-variance block stopped first and
    # its later probes were not computed; the products done are those of the block probed longest.
    assert 10 <= probes["p"] < probes["q"] < 2000
    assert stats["probes"] == probes["q"] and stats["seed"] == 7 and stats["samples"] == 1
    for k in ("p", "q"):
        assert est[k] == pytest.approx(traces[k], rel=1e-12)
        assert stats["layer_stderr"][k] == pytest.approx(stderr[k], rel=1e-9)
        assert stats["layer_stderr"][k] <= 0.05 * abs(est[k])


def test_per_layer_probes_replayed_by_hand_and_less_noisy():
    # probe="layer": one product per active block with z on that block only — no cross-block terms, so
    # with strong coupling the nearly diagonal block p needs far fewer samples than with joint probes.
    torch.manual_seed(0)
    model = _quadratic(cross=1.0)
    est, stats = _run(model, tol=0.05, min_probes=10, max_probes=2000, seed=7, probe="layer")
    traces, probes, stderr = _replay(model, tol=0.05, min_probes=10, max_probes=2000, seed=7, probe="layer")
    assert stats["layer_probes"] == probes
    assert stats["probes"] == probes["p"] + probes["q"] and stats["rounds"] == max(probes.values())
    for k in ("p", "q"):
        assert est[k] == pytest.approx(traces[k], rel=1e-12)
        assert stats["layer_stderr"][k] == pytest.approx(stderr[k], rel=1e-9)
    _, joint = _run(model, tol=0.05, min_probes=10, max_probes=2000, seed=7)
    assert probes["p"] == 10 < joint["layer_probes"]["p"]
    exact = {"p": float(model.a[:6, :6].trace()) / 6, "q": float(model.a[6:, 6:].trace()) / 4}
    for k in ("p", "q"):
        assert abs(est[k] - exact[k]) <= 4 * stats["layer_stderr"][k]
    with pytest.raises(ValueError, match="probe"):
        _run(model, probe="block")


def test_tol_zero_is_the_fixed_probe_estimator():
    # tol = 0 switches the rule off: every layer gets exactly max_probes joint probes (the estimator
    # before the rule existed), replayed by hand with the full active set.
    torch.manual_seed(0)
    model = _quadratic()
    est, stats = _run(model, tol=0.0, max_probes=37, seed=3)
    traces, probes, _ = _replay(model, tol=0.0, min_probes=10, max_probes=37, seed=3)
    assert probes == {"p": 37, "q": 37} and stats["layer_probes"] == probes and stats["probes"] == 37
    for k in ("p", "q"):
        assert est[k] == pytest.approx(traces[k], rel=1e-12)


def test_estimate_converges_to_the_exact_trace_and_stops_early():
    torch.manual_seed(0)
    model = _quadratic(seed=1)
    exact = {"p": float(model.a[:6, :6].trace()) / 6, "q": float(model.a[6:, 6:].trace()) / 4}
    for tol in (0.05, 0.01):
        est, stats = _run(model, tol=tol, min_probes=10, max_probes=100_000, seed=0)
        for k in ("p", "q"):
            se = stats["layer_stderr"][k]
            assert stats["layer_probes"][k] < 100_000  # stopped by the rule, not the cap
            assert se <= tol * abs(est[k])
            assert abs(est[k] - exact[k]) <= 4 * se, (tol, k, est[k], exact[k], se)
    # The tighter tolerance needed more probes (≈ (CV / tol)²).
    assert stats["layer_probes"]["q"] > 100


def test_stopping_rule_edge_cases():
    torch.manual_seed(0)
    # Diagonal Hessian: zᵀDz = Tr(D) for every Rademacher z, a zero standard error: stop at min_probes.
    theta = nn.Parameter(torch.randn(20))
    d = torch.linspace(0.5, 4.0, 20)

    class Diagonal(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = theta

        def forward(self, x):
            return (0.5 * d * self.theta**2).sum() + 0 * x.sum()

    stats = {}
    est = hutchinson_traces(Diagonal(), lambda out, y: out, [(torch.zeros(1), torch.zeros(1))],
                            {"q": theta}, tol=1e-3, min_probes=4, max_probes=50, stats=stats)
    assert stats["probes"] == 4 and stats["samples"] == 1 and stats["layer_stderr"]["q"] == 0.0
    assert est["q"] == pytest.approx(float(d.mean()), rel=1e-6)

    # A dense SPD matrix gives noisy probes: a tolerance that cannot be met is capped at max_probes.
    a = torch.randn(20, 20)
    a = a @ a.T
    quad = nn.Module()
    quad.theta = nn.Parameter(torch.randn(20))
    quad.forward = lambda x: 0.5 * quad.theta @ a @ quad.theta + 0 * x.sum()
    stats = {}
    hutchinson_traces(quad, lambda out, y: out, [(torch.zeros(1), torch.zeros(1))], {"q": quad.theta},
                      tol=1e-9, max_probes=7, stats=stats)
    assert stats["probes"] == 7 and stats["layer_probes"] == {"q": 7}

    # A parameter the loss is linear in has a zero Hessian block: never probed, trace 0.
    lin = nn.Linear(3, 1)
    stats = {}
    est = hutchinson_traces(lin, lambda out, y: out.sum(), [(torch.randn(4, 3), torch.zeros(4))], {"w": lin.weight},
                            max_probes=5, stats=stats)
    assert est == {"w": 0.0} and stats["probes"] == 0 and stats["layer_probes"] == {"w": 0}
    with pytest.raises(ValueError, match="min_probes"):
        hutchinson_traces(lin, lambda out, y: out.sum(), [(torch.randn(4, 3), torch.zeros(4))], {"w": lin.weight},
                          min_probes=1)


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
    from mpqbench.cost import CostMeter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,))), (torch.randn(8, 5), torch.randint(0, 3, (8,)))]
    meter, stats = CostMeter("cpu"), {}
    hutchinson_traces(model, nn.CrossEntropyLoss(), batches, {"a": model[0].weight}, tol=0.0, max_probes=6,
                      meter=meter, stats=stats)
    assert (stats["probes"], stats["samples"], stats["layer_probes"]) == (6, 24, {"a": 6})
    assert meter.steps == 1 + 6 and meter.samples == 7 * 24
    # The forward alone is 5·7 + 7·3 = 56 MACs per sample; gradient and HVP steps each cost more than that.
    assert meter.macs_processed > 7 * 24 * 56


def test_meter_counts_only_the_work_done():
    # Joint probes with the rule on: layer b stops before layer a; a's later products are taken w.r.t. a
    # alone and are cheaper. The meter (one FlopCounterMode step per active set) must match the MACs that an outer
    # FlopCounterMode sees over the whole call, and be less than the same probes over both layers.
    from torch.utils.flop_counter import FlopCounterMode

    from mpqbench.cost import CostMeter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,))), (torch.randn(8, 5), torch.randint(0, 3, (8,)))]
    layers = {"a": model[0].weight, "b": model[2].weight}
    kw = dict(tol=0.2, min_probes=3, max_probes=200, seed=0)
    meter, stats = CostMeter("cpu"), {}
    hutchinson_traces(model, nn.CrossEntropyLoss(), batches, layers, meter=meter, stats=stats, probe="joint", **kw)
    n_a, n_b = stats["layer_probes"]["a"], stats["layer_probes"]["b"]
    assert 3 <= n_b < n_a < 200 and stats["probes"] == n_a
    assert meter.steps == 1 + n_a
    with FlopCounterMode(display=False) as counter:
        hutchinson_traces(model, nn.CrossEntropyLoss(), batches, layers, probe="joint", **kw)
    assert meter.macs_processed == round(counter.get_total_flops() / 2)
    full = CostMeter("cpu")
    hutchinson_traces(model, nn.CrossEntropyLoss(), batches, layers, meter=full, tol=0.0, max_probes=n_a,
                      probe="joint")
    assert full.steps == meter.steps and meter.macs_processed < full.macs_processed
    # Per-layer probes: one step per product, each counted at its own layer's MACs.
    meter, stats = CostMeter("cpu"), {}
    hutchinson_traces(model, nn.CrossEntropyLoss(), batches, layers, meter=meter, stats=stats, probe="layer", **kw)
    assert meter.steps == 1 + stats["probes"] == 1 + sum(stats["layer_probes"].values())
    with FlopCounterMode(display=False) as counter:
        hutchinson_traces(model, nn.CrossEntropyLoss(), batches, layers, probe="layer", **kw)
    assert meter.macs_processed == round(counter.get_total_flops() / 2)


def test_hawq_policy_floor_makes_the_policy_spend_its_budget():
    # A quantization error that grows with the bits (artificial) makes the lowest bits the cheapest: without
    # a floor the ILP takes 2 bits everywhere and leaves most of the budget unused; with floor 0.9 it must
    # spend 90–100 % of it.
    torch.manual_seed(0)
    model = _TwoLayer()
    names, macs, cands = ["a", "b"], {"a": 1_000_000, "b": 1_000_000}, [2, 3, 4]
    traces = {"a": 1.0, "b": 100.0}
    grows = lambda w, b: float(b)  # noqa: E731
    budget = (9 + 16) * 1_000_000 / 1e9  # BitOPs per layer 4 / 9 / 16 (×1e-3 G) at 2 / 3 / 4 bits
    free = hawq_policy(model, names, macs, cands, budget, traces, quant_error=grows)
    assert free == {"a": (2, 2), "b": (2, 2)}  # 8 of 25: 32 % of the budget
    # In the window [22.5, 25] only a3/b4 and a4/b3 (25 each) fit; Σ Ω = 1·3 + 100·4 = 403 against
    # 1·4 + 100·3 = 304, so the ILP takes a4/b3.
    held = hawq_policy(model, names, macs, cands, budget, traces, floor=0.9, quant_error=grows)
    assert held == {"a": (4, 4), "b": (3, 3)}
    # floor 0 or None: no lower bound.
    assert hawq_policy(model, names, macs, cands, budget, traces, floor=0.0, quant_error=grows) == free


def test_hawq_policy_floor_infeasible_is_a_user_error():
    torch.manual_seed(0)
    model = _TwoLayer()
    macs = {"a": 1_000_000, "b": 1_000_000}
    # Tied bits {2, 4, 8} on two equal layers: BitOPs 4+4 … 64+64 (×1e-3 G); under a budget of 0.1 the most
    # that fits is 64 + 16 = 80, so a 90 % floor (90) has no solution.
    with pytest.raises(UserError, match="budget_floor"):
        hawq_policy(model, ["a", "b"], macs, [2, 4, 8], 0.1, {"a": 1.0, "b": 1.0}, floor=0.9)
    assert hawq_policy(model, ["a", "b"], macs, [2, 4, 8], 0.1, {"a": 1.0, "b": 1.0}, floor=0.8) in (
        {"a": (8, 8), "b": (4, 4)}, {"a": (4, 4), "b": (8, 8)})
    with pytest.raises(UserError, match="floor"):
        hawq_policy(model, ["a", "b"], macs, [2, 4, 8], 0.1, {"a": 1.0, "b": 1.0}, floor=1.5)


# ---------------------------------------------------------------------------------------------- the methods
def _hawq_ctx(tmp_path, budget: str = "w2.5a2.5"):
    from mpqbench.cost import CostMeter, arch_cost, budget_bitops_g
    from mpqbench.data import TensorImageDataset
    from mpqbench.models import get_model
    from mpqbench.search import SearchContext
    from mpqbench.utils import torch_save

    arch, size, width = "resnet20", 8, 0.25
    torch.manual_seed(123)
    model = get_model(arch, num_classes=10, in_channels=1, input_size=size, width=width)
    meta = {"arch": arch, "dataset": "digits", "num_classes": 10, "in_channels": 1, "input_size": size,
            "width": width, "epochs": 0, "seed": 0, "top1": 0.0, "top5": 0.0, "wall_s": 1.0, "macs_processed": 5}
    torch_save({"state_dict": model.state_dict(), "meta": meta}, tmp_path / "fp.pt")
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.rand(40, 1, size, size, generator=g), torch.randint(0, 10, (40,), generator=g),
                              mean=[0.5], std=[0.25], classes=[str(i) for i in range(10)], crop_pad_px=0, flip=False)
    cost = arch_cost(arch, input_size=size, num_classes=10, in_channels=1, width=width)
    searchable = list(cost.searchable)
    return SearchContext(
        arch=arch, proxy="digits", proxy_train=data, num_classes=10, in_channels=1, input_size=size, width=width,
        target_macs=cost.macs, searchable=searchable, fixed=list(cost.fixed), budget_name=budget,
        budget_bitops_g=budget_bitops_g(budget, cost.macs, searchable), w_candidates=[2, 3, 4],
        a_candidates=[2, 3, 4], seed=5, device=torch.device("cpu"), meter=CostMeter("cpu"),
        teacher_ckpt=tmp_path / "fp.pt", progress=False,
    )


def test_hawq_search_records_probes_and_spends_its_budget(tmp_path):
    from baselines.hawq import Hawq, HawqHparams

    ctx = _hawq_ctx(tmp_path)
    hp = HawqHparams(batch_size=16, tol=0.3, min_probes=3, max_probes=30)
    out = Hawq().search(ctx, hp)
    extra = out.extra
    assert extra["probe_seed"] == 5 and extra["budget_floor"] == 0.9
    assert set(extra["layer_probes"]) == set(ctx.searchable) == set(extra["avg_hessian_trace_stderr"])
    # per-layer probes (the default): one product per layer sample; the rounds are the longest layer's
    assert extra["probes"] == sum(extra["layer_probes"].values())
    assert extra["probe_rounds"] == max(extra["layer_probes"].values())
    assert min(extra["layer_probes"].values()) >= 3
    assert min(extra["layer_probes"].values()) < extra["probe_rounds"]  # layers stop at different counts
    for name, n in extra["layer_probes"].items():
        se, tr = extra["avg_hessian_trace_stderr"][name], extra["avg_hessian_trace"][name]
        assert n == 30 or se <= 0.3 * abs(tr)
    # one gradient step, then one step per Hessian-vector product; batch 16 of 40 images
    assert ctx.meter.steps == 1 + extra["probes"] and out.epochs == pytest.approx(16 / 40)
    used = ctx.bitops_g(out.layers) / ctx.budget_bitops_g
    assert 0.9 <= used <= 1 + 1e-9
    assert all(w == a for w, a in out.layers.values())
    # The hyper-parameter overrides the suite's window; the same seed gives the same policy.
    loose = Hawq().search(_hawq_ctx(tmp_path), HawqHparams(batch_size=16, tol=0.3, min_probes=3, max_probes=30,
                                                          budget_floor=0.0))
    assert loose.extra["budget_floor"] == 0.0 and loose.extra["avg_hessian_trace"] == extra["avg_hessian_trace"]
    assert Hawq().search(_hawq_ctx(tmp_path), hp).layers == out.layers


def test_hawq_target_is_hawq_on_the_target():
    from baselines.hawq import Hawq, HawqHparams
    from mpqbench.search import get_method

    cls = get_method("hawq-target")
    assert issubclass(cls, Hawq) and cls.Hparams is HawqHparams
    assert cls.searches_on_target and cls.needs_teacher and not cls.iterative
    assert not get_method("hawq").searches_on_target
