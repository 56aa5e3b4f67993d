"""OMPQ (baselines/ompq.py): linear CKA (the ORM), the importance derived from it, the layer features, and the
bit allocation in the budget window.

- linear CKA is 1 for identical features, for a feature and an orthogonal transform (or an isotropic
  scaling) of it, equals the squared correlation for 1-d features (3/4 in a hand case), and is near 0 for
  independent random features when n is large;
- γ, θ and the LP coefficients c of a hand 3-entry ORM matrix, and the allocation that maximises Σ c·b;
- the features: one entry per basic-block conv1 (ReLU(BN1(conv1 ·))) and one per block output shared by conv2
  and the down-sample conv, in execution order, checked against a hand forward;
- the search's policy is made of candidate pairs, lies inside the budget window, and costs one metered forward.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baselines.ompq import (
    Ompq,
    OmpqHparams,
    activation_order,
    extract_features,
    feature_entries,
    linear_cka,
    ompq_allocation,
    ompq_importance,
    orm_matrix,
)
from mpqbench.cost import arch_cost
from mpqbench.data import load_split, subset
from mpqbench.errors import UserError
from mpqbench.models import get_model
from mpqbench.search import SearchContext
from mpqbench.utils import torch_save
from searchkit import tiny_context

ARCH, WIDTH, SIZE = "resnet20", 0.25, 8


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------- linear CKA
def test_cka_of_identical_features_is_one():
    x = torch.randn(50, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 30, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    assert torch.allclose(q.T @ q, torch.eye(30, dtype=torch.float64), atol=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 7.5 * (x @ q)) == pytest.approx(1.0, abs=1e-12)
    # not invariant to an anisotropic scaling of the features (a contrast)
    assert linear_cka(x, x * torch.linspace(0.1, 10, 30, dtype=torch.float64)) < 0.9


def test_cka_of_one_dimensional_features_is_the_squared_correlation_by_hand():
    # centred x = (−1, 0, 1), centred y = (2, −1, −1)/3: xᵀy = −2/3 − 1/3 = −1, |x|² = 2, |y|² = 6/9,
    # (xᵀy)² / (|x|²|y|²) = 1 / (4/3) = 3/4
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [0.0]])
    assert linear_cka(x, y) == pytest.approx(3 / 4, abs=1e-12)
    assert linear_cka(x, -2 * x + 5) == pytest.approx(1.0, abs=1e-12)  # an affine map of a 1-d feature


def test_cka_of_independent_features_is_near_zero_for_large_n():
    g = torch.Generator().manual_seed(2)
    big = [linear_cka(torch.randn(1500, 4, generator=g), torch.randn(1500, 4, generator=g)) for _ in range(3)]
    assert max(big) < 0.01  # ≈ d/n ≈ 0.003
    small = linear_cka(torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g))
    assert small > 0.2  # few samples: the biased estimator is far from 0 (why the ORM of a 32-image batch is high)


def test_orm_matrix_is_symmetric_with_unit_diagonal():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(20, 5, generator=g)
    feats = [a, a @ torch.linalg.qr(torch.randn(5, 5, generator=g))[0], torch.randn(20, 9, generator=g)]
    orm = orm_matrix(feats)
    assert np.allclose(orm, orm.T) and np.allclose(np.diag(orm), 1.0)
    assert orm[0, 1] == pytest.approx(1.0, abs=1e-9) and orm[0, 2] == pytest.approx(linear_cka(feats[0], feats[2]))


# ---------------------------------------------------------------------------------- importance and bits
def test_importance_of_a_hand_orm_matrix():
    orm = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]])
    imp = ompq_importance(orm, beta=1.0)
    assert imp["gamma"] == pytest.approx([0.7, 0.8, 0.5])  # row sums without the diagonal
    # θ = exp(−γ) divided by the largest, exp(−0.5)
    assert imp["theta"] == pytest.approx([math.exp(-0.2), math.exp(-0.3), 1.0])
    # c_k = mean of θ over k and the entries after it
    e2, e3 = math.exp(-0.2), math.exp(-0.3)
    assert imp["coef"] == pytest.approx([(e2 + e3 + 1) / 3, (e3 + 1) / 2, 1.0])
    assert imp["coef"] == pytest.approx([0.853182991, 0.870409110, 1.0])
    # β scales the contrast: β = 0 makes every entry equally important
    assert ompq_importance(orm, beta=0.0)["coef"] == pytest.approx([1.0, 1.0, 1.0])
    # huge β·γ does not underflow to all zeros (computed relative to the largest θ)
    assert ompq_importance(orm * 400, beta=10.0)["theta"].max() == 1.0


def test_allocation_maximises_importance_weighted_bits_by_hand():
    coef = [0.853182991, 0.870409110, 1.0]
    groups = [["a"], ["b", "b_ds"], ["c"]]  # "b_ds" shares b's entry (a block's down-sample conv)
    macs = {"a": 10**9, "b": 5 * 10**8, "b_ds": 5 * 10**8, "c": 10**9}  # every entry 1 G MACs
    # fixed a = 2, budget 18 G (average w3), floor 0.9: Σ b ∈ [8.1, 9] → Σ b = 9; the largest c gets most bits:
    # (2, 3, 4) gives 8.317 against (3, 2, 4) 8.300 and (2, 4, 3) 8.188
    out = ompq_allocation(coef, groups, macs, [2, 3, 4], 2, 18.0, floor=0.9)
    assert out == {"a": (2, 2), "b": (3, 2), "b_ds": (3, 2), "c": (4, 2)}
    # tied activations: BitOPs Σ MACs·b², budget 29 G, window [26.1, 29]: the fits are the orders of (2, 3, 4)
    # (29 G) and (3, 3, 3) (27 G); (2, 3, 4) scores 8.317, (3, 2, 4) 8.300, (2, 4, 3) 8.188, (3, 3, 3) 8.171
    assert ompq_allocation(coef, groups, macs, [2, 3, 4], None, 29.0, floor=0.9) == {
        "a": (2, 2), "b": (3, 3), "b_ds": (3, 3), "c": (4, 4)}


def test_activation_order_prefers_the_largest_candidate_within_the_budget():
    assert activation_order([2, 3, 4], 3.0) == [3, 2, 4]
    assert activation_order([2, 3, 4], 2.5) == [2, 3, 4]
    assert activation_order([4, 8], 3.0) == [4, 8]


# ---------------------------------------------------------------------------------- the features
def _model(seed: int = 0):
    torch.manual_seed(seed)
    return get_model(ARCH, num_classes=10, in_channels=1, input_size=SIZE, width=WIDTH)


def test_resnet_entries_and_features_match_a_hand_forward():
    model = _model().eval()
    searchable = arch_cost(ARCH, input_size=SIZE, num_classes=10, in_channels=1, width=WIDTH).searchable
    entries = feature_entries(model, searchable)
    groups = [e[0] for e in entries]
    assert len(groups) == 18  # 9 blocks × (conv1, block output)
    assert sorted(n for g in groups for n in g) == sorted(searchable)
    assert ("layer2.0.conv2", "layer2.0.downsample.0") in groups and ("layer1.0.conv1",) in groups
    x = torch.randn(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    feats, order = extract_features(model, x, entries)
    ordered = [groups[i] for i in order]
    assert ordered[:4] == [("layer1.0.conv1",), ("layer1.0.conv2",), ("layer1.1.conv1",), ("layer1.1.conv2",)]
    with torch.no_grad():  # by hand: the stem, then block layer1.0's two functions
        h = model.relu(model.bn1(model.conv1(x)))
        b = model.layer1[0]
        f1 = torch.relu(b.bn1(b.conv1(h)))
        f2 = b(h)
    assert torch.allclose(feats[0], f1.reshape(6, -1)) and torch.allclose(feats[1], f2.reshape(6, -1))


def test_torchvision_archs_have_one_entry_per_function():
    from mpqbench.models import searchable_layer_names

    r18 = get_model("resnet18", num_classes=10, in_channels=3, input_size=32, width=0.25)
    groups = [e[0] for e in feature_entries(r18, searchable_layer_names(r18))]
    assert len(groups) == 16 and ("layer2.0.conv2", "layer2.0.downsample.0") in groups  # OMPQ's 16 (QAT)
    mb = get_model("mobilenet_v2", num_classes=10, in_channels=3, input_size=32, width=0.25).eval()
    names = searchable_layer_names(mb)
    entries = feature_entries(mb, names)
    assert sorted(n for e in entries for n in e[0]) == sorted(names) and all(len(e[0]) == 1 for e in entries)
    feats, order = extract_features(mb, torch.randn(4, 3, 32, 32), entries)
    assert len(feats) == len(entries) and sorted(order) == list(range(len(entries)))


# ---------------------------------------------------------------------------------- the search
@pytest.fixture(scope="module")
def target_fp(tmp_path_factory):
    path = tmp_path_factory.mktemp("ompq") / "fp.pt"
    meta = {"arch": ARCH, "dataset": "fashion-mnist", "num_classes": 10, "in_channels": 1, "input_size": SIZE,
            "width": WIDTH, "macs_processed": 1, "wall_s": 1.0}
    torch_save({"state_dict": _model(1).state_dict(), "meta": meta}, path)
    return path


def _ctx(teacher, budget: str) -> SearchContext:
    return tiny_context(teacher, proxy_train=subset(load_split("digits", "train", input_size=SIZE), count=64, seed=0),
                        arch=ARCH, width=WIDTH, input_size=SIZE, budget=budget)


@pytest.mark.parametrize("budget, activations, a_bits", [("w3a3", "fixed", 3), ("w2.5a2.5", "fixed", 2),
                                                         ("w2.5a2.5", "tied", None)])
def test_policy_meets_the_budget_window(target_fp, budget, activations, a_bits):
    ctx = _ctx(target_fp, budget)
    out = Ompq().search(ctx, OmpqHparams(activations=activations))
    used = ctx.bitops_g(out.layers) / ctx.budget_bitops_g
    assert 0.9 - 1e-9 <= used <= 1 + 1e-9
    assert set(out.layers) == set(ctx.searchable)
    assert all(w in (2, 3, 4) and a in (2, 3, 4) for w, a in out.layers.values())
    assert out.extra["a_bits"] == a_bits
    if a_bits is not None:
        assert {a for _, a in out.layers.values()} == {a_bits}
    else:
        assert all(w == a for w, a in out.layers.values())
    for group in out.extra["entries"]:  # a block's down-sample conv gets its block output's bits
        assert len({out.layers[n] for n in group}) == 1
    assert ctx.meter.steps == 1 and ctx.meter.macs_processed > 0 and out.extra["images"] == 32
    # the policy maximises Σ c·b with the recorded coefficients
    again = ompq_allocation(out.extra["coef_rel"], out.extra["entries"], ctx.target_macs, [2, 3, 4], a_bits,
                            ctx.budget_bitops_g, floor=0.9)
    assert again == out.layers


def test_fixed_activation_bits_outside_the_window_is_one_clear_error(target_fp):
    with pytest.raises(UserError, match="no policy in the budget window"):
        Ompq().search(_ctx(target_fp, "w2.5a2.5"), OmpqHparams(a_bits=4))  # w·4 ≥ 8 > 6.25 per MAC
    with pytest.raises(UserError, match="not a candidate"):
        Ompq().search(_ctx(target_fp, "w3a3"), OmpqHparams(a_bits=5))
