"""Policy JSON: round trip, every validation error, the same policy on the proxy and target geometry; repair."""

import json

import pytest

from mpqbench.errors import UserError
from mpqbench.models import fixed_layer_names, get_model, searchable_layer_names
from mpqbench.policy import Budget, LayerBits, Policy
from mpqbench.cost import bitops_g
from mpqbench.search.repair import repair_to_budget


@pytest.fixture(scope="module")
def proxy_model():
    return get_model("resnet18", num_classes=10, in_channels=3, input_size=32)


@pytest.fixture(scope="module")
def target_model():
    return get_model("resnet18", num_classes=1000, in_channels=3, input_size=224)


def make_policy(model, w=3, a=3) -> Policy:
    return Policy(arch="resnet18", method="uniform", budget=Budget(name="w3a3", bitops_g=1.0),
                  layers={n: LayerBits(w=w, a=a) for n in searchable_layer_names(model)},
                  fixed={n: LayerBits(w=8, a=8) for n in fixed_layer_names(model)})


def test_round_trip(tmp_path, proxy_model):
    p = make_policy(proxy_model)
    p.layers["layer1.0.conv1"].w = 2
    path = tmp_path / "p.json"
    p.save(path)
    q = Policy.load(path)
    assert q == p
    assert q.bits()["layer1.0.conv1"] == (2, 3)
    assert q.bits()["conv1"] == (8, 8) and q.bits()["fc"] == (8, 8)
    assert "conv1" not in q.bits(include_fixed=False)
    assert json.loads(path.read_text())["schema_version"] == 1


def test_validate_ok_and_errors(proxy_model):
    p = make_policy(proxy_model)
    p.validate_for(proxy_model)

    unknown = p.model_copy(deep=True)
    unknown.layers["layer9.0.conv1"] = unknown.layers["layer1.0.conv1"]
    with pytest.raises(UserError, match="does not have as searchable: layer9.0.conv1"):
        unknown.validate_for(proxy_model)

    missing = p.model_copy(deep=True)
    del missing.layers["layer4.1.conv2"]
    with pytest.raises(UserError, match="lacks searchable layers layer4.1.conv2"):
        missing.validate_for(proxy_model)

    outside = p.model_copy(deep=True)
    outside.layers["layer2.0.conv1"].w = 5
    with pytest.raises(UserError, match="W5A3, outside the candidates"):
        outside.validate_for(proxy_model)

    bad_fixed = p.model_copy(deep=True)
    bad_fixed.fixed["layer1.0.conv1"] = bad_fixed.fixed["fc"]
    with pytest.raises(UserError, match="not the stem/classifier"):
        bad_fixed.validate_for(proxy_model)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a policy object"),
        ('{"schema_version": 7}', "schema_version 7"),
        ('{"arch": "resnet18", "method": "x", "budget": {"name": "w3a3", "bitops_g": 1}, "layers": {"a": {"w": 0, "a": 3}}}', "malformed at 'layers.a.w'"),
    ],
)
def test_load_errors(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        Policy.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Policy.load(tmp_path / "nope.json")


def test_a_proxy_policy_validates_on_the_target_geometry(proxy_model, target_model):
    # a policy searched at the proxy geometry deploys on the target geometry of the same arch (same layer names)
    p = make_policy(proxy_model)
    p.layers["layer3.1.conv2"].a = 4
    p.validate_for(target_model, check_candidates=False)
    other_arch = get_model("resnet50", num_classes=1000, input_size=224)
    with pytest.raises(UserError):
        p.validate_for(other_arch, check_candidates=False)


def test_repair_meets_budget_and_prefers_cheap_moves():
    macs = {"a": 100, "b": 1000}
    layers = {"a": (4, 4), "b": (4, 4)}
    budget = bitops_g(macs, {"a": (4, 4), "b": (3, 4)})  # exactly one step on b's weights fits
    out, repaired = repair_to_budget(layers, macs, budget, [2, 3, 4], [2, 3, 4])
    assert repaired and bitops_g(macs, out) <= budget
    # without preferences the largest saving goes first: one of b's bit-widths drops, a is untouched
    assert out["a"] == (4, 4) and sorted(out["b"]) == [3, 4]

    # with preferences, the move the method minds least (a's activations) is taken first
    prefs = {"a": {"w": {2: -9.0, 3: -9.0, 4: 0.0}, "a": {2: -0.1, 3: -0.01, 4: 0.0}},
             "b": {"w": {2: -9.0, 3: -9.0, 4: 0.0}, "a": {2: -9.0, 3: -9.0, 4: 0.0}}}
    budget2 = bitops_g(macs, {"a": (4, 3), "b": (4, 4)})
    out2, _ = repair_to_budget(layers, macs, budget2, [2, 3, 4], [2, 3, 4], preferences=prefs)
    assert out2 == {"a": (4, 3), "b": (4, 4)}

    same, repaired = repair_to_budget(layers, macs, 1.0, [2, 3, 4], [2, 3, 4])
    assert not repaired and same == layers


def test_repair_infeasible():
    with pytest.raises(UserError, match="below the smallest policy"):
        repair_to_budget({"a": (4, 4)}, {"a": 10**9}, 1.0, [2, 3, 4], [2, 3, 4])
