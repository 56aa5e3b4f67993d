"""MACs, BitOPs, size, budgets and search-cost accounting, checked against hand counts and published figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpqbench.cost import (
    ArchCost,
    CostMeter,
    arch_cost,
    bitops_g,
    budget_bitops_g,
    complexity_report,
    layer_macs,
    parse_budget,
    summarize,
)
from mpqbench.errors import UserError


class HandNet(nn.Module):
    """3×8×8 input. MACs: stem 3·4·9·64 = 6912, dw 1·4·9·16 = 576 (stride 2 → 4×4), pw 4·6·16 = 384, head 96·10 = 960."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
        self.pw = nn.Conv2d(4, 6, 1, bias=False)
        self.head = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(torch.relu(self.bn(self.stem(x)))))
        return self.head(x.flatten(1))


HAND_MACS = {"stem": 6912, "dw": 576, "pw": 384, "head": 960}


class StatefulQConv(nn.Conv2d):
    """Stand-in for a quantized conv: fake-quantizes its weight, initialises a step from the first batch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("step", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step == 0:
            self.step.fill_(x.abs().mean().item())
        w = torch.round(self.weight / 0.1) * 0.1
        return self._conv_forward(x, w, self.bias)


def test_hand_counted_macs():
    assert layer_macs(HandNet(), input_size=8, in_channels=3) == HAND_MACS


def test_macs_of_quantized_subclass_and_model_state_untouched():
    net = HandNet()
    q = StatefulQConv(4, 6, 1, bias=False)
    net.pw = q
    net.train()
    assert layer_macs(net, input_size=8, in_channels=3) == HAND_MACS
    assert net.training and q.step.item() == 0 and net.bn.num_batches_tracked.item() == 0


def test_hand_counted_summary():
    cost = ArchCost.from_model(HandNet(), input_size=8, in_channels=3)
    assert cost.fixed == ("stem", "head") and cost.searchable == ["dw", "pw"]
    assert cost.weight_params == {"stem": 108, "dw": 36, "pw": 24, "head": 960}
    assert cost.other_params == 10 + 8  # head bias + BN weight/bias
    assert cost.kinds == {"stem": "Conv2d", "dw": "DWConv2d", "pw": "Conv2d", "head": "Linear"}

    s = summarize(cost, {"dw": (4, 2), "pw": (3, 5)})  # stem/head default W8A8
    assert s.bitops_g_searchable == pytest.approx((576 * 8 + 384 * 15) / 1e9)
    assert s.bitops_g_all == pytest.approx((576 * 8 + 384 * 15 + (6912 + 960) * 64) / 1e9)
    assert s.size_mb == pytest.approx((108 + 36 * 4 / 8 + 24 * 3 / 8 + 960 + 18 * 4) / 1e6)
    assert (s.avg_w_bits, s.avg_a_bits) == pytest.approx(((576 * 4 + 384 * 3) / 960, (576 * 2 + 384 * 5) / 960))

    fp_stem = summarize(cost, {"dw": (4, 2), "pw": (3, 5)}, {"stem": (32, 32), "head": (8, 8)})
    assert fp_stem.bitops_g_all - s.bitops_g_all == pytest.approx(6912 * (1024 - 64) / 1e9)
    with pytest.raises(UserError, match="without bits \\['pw'\\]"):
        summarize(cost, {"dw": (4, 2)})
    with pytest.raises(UserError, match="does not fit"):
        summarize(cost, {"dw": (4, 2), "pw": (4, 4), "stem": (4, 4)})


def test_budget_bitops_by_hand():
    searchable = ["dw", "pw"]
    assert budget_bitops_g("w3a3", HAND_MACS, searchable) == pytest.approx(960 * 9 / 1e9)
    assert budget_bitops_g("w2.5a2.5", HAND_MACS, searchable) == pytest.approx(960 * 6.25 / 1e9)
    assert budget_bitops_g("w4a2", HAND_MACS, searchable) == pytest.approx(960 * 8 / 1e9)
    with pytest.raises(UserError, match="not in the model"):
        bitops_g(HAND_MACS, {"nope": (4, 4)})


@pytest.mark.parametrize(
    "name,bits", [("w3a3", (3, 3)), ("w2.5a2.5", (2.5, 2.5)), ("W4A8", (4, 8)), (" w32a32 ", (32, 32)), ("w2a3.25", (2, 3.25))]
)
def test_parse_budget(name, bits):
    assert parse_budget(name) == bits


@pytest.mark.parametrize("name", ["", "w3", "a3w3", "w3a3x", "w0a4", "w33a4", "w-1a2", "w3.a3", "3a3", "w3 a3", None])
def test_parse_budget_rejects_malformed(name):
    with pytest.raises(UserError, match="w<bits>a<bits>|\\(0, 32\\]"):
        parse_budget(name)


# ------------------------------------------------------------------------------------ published figures


@pytest.fixture(scope="module")
def imagenet_costs() -> dict[str, ArchCost]:
    return {a: arch_cost(a, input_size=224, num_classes=1000) for a in ("resnet18", "resnet50", "mobilenet_v2")}


@pytest.mark.parametrize("arch,gmacs", [("resnet18", 1.81), ("resnet50", 4.09), ("mobilenet_v2", 0.30)])
def test_imagenet_macs_match_torchvision_metadata(imagenet_costs, arch, gmacs):
    assert round(sum(imagenet_costs[arch].macs.values()) / 1e9, 2) == gmacs


@pytest.mark.parametrize("arch,w4a4_all,w4a4_searchable", [("resnet18", 34.7, 27.1), ("resnet50", 71.2, 63.5)])
def test_w4a4_bitops_match_reference_table(imagenet_costs, arch, w4a4_all, w4a4_searchable):
    """research/mpq-baselines.md §1.2 (ResNet-18 FP figure reproduces HAWQ-V3's model zoo)."""
    cost = imagenet_costs[arch]
    s = summarize(cost, {n: (4, 4) for n in cost.searchable})
    assert (round(s.bitops_g_all, 1), round(s.bitops_g_searchable, 1)) == (w4a4_all, w4a4_searchable)


def test_resnet20_cifar_macs():
    """40.81 M MACs with the two 1×1 projection shortcuts (131,072 each); 40.55 M without them — the
    figure usually quoted for ResNet-20 with parameter-free (option A) shortcuts."""
    macs = arch_cost("resnet20", input_size=32, num_classes=10).macs
    assert sum(macs.values()) == 40_813_184
    assert macs["layer2.0.downsample.0"] == macs["layer3.0.downsample.0"] == 131_072
    assert sum(v for n, v in macs.items() if "downsample" not in n) == 40_551_040


def test_cifar_and_imagenet_resnet18_same_names_different_macs(imagenet_costs):
    small = arch_cost("resnet18", input_size=32, num_classes=10)
    large = imagenet_costs["resnet18"]
    assert small.searchable == large.searchable and len(small.searchable) == 19
    assert sum(small.macs.values()) != sum(large.macs.values())
    for name in small.searchable:  # 56×56 vs 32×32 feature maps in every stage
        assert large.macs[name] * 1024 == small.macs[name] * 3136, name


# ------------------------------------------------------------------------------------ complexity report


def test_complexity_report_uniform_and_dict():
    rep = complexity_report("resnet20", 32, 10, policy="w4a4")
    totals, layers = rep["totals"], rep["layers"]
    assert rep["arch"] == "resnet20" and rep["input_size"] == 32 and len(layers) == 22
    assert set(layers[0]) == {"name", "type", "macs", "w", "a", "bitops_g", "params", "searchable"}
    assert layers[0]["name"] == "conv1" and (layers[0]["w"], layers[0]["a"], layers[0]["searchable"]) == (8, 8, False)
    assert totals["macs_g_all"] == pytest.approx(40_813_184 / 1e9)
    assert totals["bitops_g_all"] == pytest.approx(sum(r["bitops_g"] for r in layers))
    assert totals["bitops_g_searchable"] == pytest.approx(totals["macs_g_searchable"] * 16)
    assert (totals["avg_w_bits"], totals["avg_a_bits"]) == (4, 4)

    bits = {r["name"]: {"w": 2, "a": 3} for r in layers if r["searchable"]}
    bits["fc"] = (4, 8)  # fixed layers may be given; else W8A8
    mixed = complexity_report("resnet20", 32, 10, policy=bits)
    fc = next(r for r in mixed["layers"] if r["name"] == "fc")
    assert (fc["w"], fc["a"]) == (4, 8) and mixed["totals"]["avg_a_bits"] == 3
    assert mixed["totals"]["size_mb"] < totals["size_mb"]


def test_complexity_report_rejects_fractional_and_incomplete_policies():
    with pytest.raises(UserError, match="fractional"):
        complexity_report("resnet20", 32, 10, policy="w2.5a2.5")
    with pytest.raises(UserError, match="without bits"):
        complexity_report("resnet20", 32, 10, policy={"layer1.0.conv1": (4, 4)})
    with pytest.raises(UserError, match="unknown arch"):
        complexity_report("nope", 32, 10, policy="w4a4")


# ------------------------------------------------------------------------------------ search cost


def _tiny_step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_search_cost_meter_counts_forward_and_backward_macs():
    """Linear 5→7, Linear 7→3. Forward 35 + 21 MACs/sample. FlopCounterMode counts backward as 2× forward
    (input + weight gradients) except for the first layer, whose input needs no gradient: 35 + 2·21."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    meter = CostMeter("cpu")
    for batch in (4, 4, 4, 2):
        with meter.step(batch):
            _tiny_step(model, opt, torch.randn(batch, 5), torch.randint(0, 3, (batch,)))
    per_sample = (35 + 21) + (35 + 2 * 21)
    assert meter.macs_per_sample == per_sample
    assert (meter.steps, meter.samples, meter.macs_processed) == (4, 14, per_sample * 14)
    d = meter.to_dict()
    assert set(d) == {"wall_s", "steps", "samples", "macs_processed", "macs_per_sample", "device", "gpu_hours"}
    assert d["wall_s"] > 0 and d["gpu_hours"] == 0 and d["device"].startswith("cpu")

    with pytest.raises(RuntimeError, match="boom"):  # a failing step is not counted
        with meter.step(4):
            raise RuntimeError("boom")
    assert (meter.steps, meter.samples) == (4, 14)


def test_search_cost_meter_kinds_and_world_size():
    model = nn.Linear(5, 7)
    meter = CostMeter("cpu", world_size=2)
    x = torch.randn(3, 5)
    with meter.step(3, kind="weight"):
        model(x).sum().backward()  # 35 forward + 35 weight grad
    with meter.step(3, kind="eval"):
        with torch.no_grad():
            model(x)  # 35
    with meter.step(3, kind="eval"):
        model(x)
    assert meter.samples == 18 and meter.macs_processed == 2 * (70 * 3 + 35 * 6)


def test_macs_of_real_quantized_layers_and_state_untouched():
    layers = pytest.importorskip("mpqbench.quant.layers")
    net = HandNet()
    net.dw = layers.QConv2d.from_float(net.dw, 4, 4)
    net.head = layers.QLinear.from_float(net.head, 8, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert layer_macs(net, input_size=8, in_channels=3) == HAND_MACS
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_importing_cost_does_not_load_the_flop_counter() -> None:
    """torch.utils.flop_counter loads triton where it is installed; jobs that count no MACs skip it."""
    import subprocess
    import sys

    code = ("import sys, mpqbench.cost, mpqbench.train, mpqbench.pipeline; "
            "print('torch.utils.flop_counter' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
