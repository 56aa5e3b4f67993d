"""The generic contract every registered method must pass (benchopt style), on the smoke setting.

For each method: the policy validates against the arch, meets the budget on the target geometry (and
lands inside the budget window [floor, 1] when its method can choose how much to spend: a budget-matched
extraction or the random control), is identical for the same seed on CPU, and records its search cost
(wall_s > 0; macs_processed > 0 for every method that runs a network, exactly 0 for the controls).
"""

from __future__ import annotations

import pytest
import torch

from mpqbench.data import dataset_info
from mpqbench.models import get_model
from mpqbench.policy import Policy
from mpqbench.search import get_method, list_methods
from mpqbench.search.run import SearchRequest, run_search

# Smoke geometry: tiny ResNet-20 on digits at 16×16; each method's class gives its seconds-long settings
# (``smoke_hparams``), so this file names no method.
ARCH, WIDTH, PROXY, TARGET = "resnet20", 0.25, "digits", "fashion-mnist"


def fashion_available() -> bool:
    try:
        dataset_info(TARGET)
        from mpqbench.data import load_split

        load_split(TARGET, "test", input_size=16)
        return True
    except Exception:  # noqa: BLE001
        return False


pytestmark = pytest.mark.skipif(not fashion_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The FP model a method reads, on the dataset it searches (made once per dataset)."""
    from mpqbench.pipeline import pretrain
    from mpqbench.train import TrainConfig

    made: dict[str, object] = {}

    def on(dataset: str):
        if dataset not in made:
            out = tmp_path_factory.mktemp("teacher") / f"fp_{dataset}.pt"
            pretrain(arch=ARCH, dataset=dataset, data_root=None, input_size=16, width=WIDTH, subset=256,
                     cfg=TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=0, device="cpu"), out=out,
                     progress=False)
            made[dataset] = out
        return made[dataset]

    return on


def smoke_request(method: str, seed: int, teacher) -> SearchRequest:
    cls = get_method(method)
    hp = dict(cls.smoke_hparams)
    proxy = TARGET if cls.searches_on_target else PROXY
    teacher = teacher(proxy) if cls.needs_teacher else None
    return SearchRequest(method=method, arch=ARCH, proxy=proxy, target=TARGET, budget="w2.5a2.5", seed=seed,
                         proxy_subset=200, proxy_input_size=16, target_input_size=16, width=WIDTH, hparams=hp,
                         teacher=teacher, device="cpu", progress=False)


@pytest.mark.parametrize("method", list_methods())
def test_method_contract(method, tmp_path, teacher):
    torch.set_num_threads(1)  # same kernels on every run → bitwise-identical searches for a seed
    a = run_search(smoke_request(method, 0, teacher), tmp_path / "a.json")
    b = run_search(smoke_request(method, 0, teacher), tmp_path / "b.json")
    policy = Policy.load(tmp_path / "a.json")

    target_model = get_model(ARCH, num_classes=10, in_channels=1, input_size=16, width=WIDTH)
    policy.validate_for(target_model)
    assert policy.achieved.bitops_g_searchable <= policy.budget.bitops_g * (1 + 1e-9)
    assert a.bits() == b.bits(), "same seed must give the same policy"
    assert policy.search.wall_s > 0
    cls = get_method(method)
    used = policy.achieved.bitops_g_searchable / policy.budget.bitops_g
    assert policy.achieved.budget_used == pytest.approx(used, rel=1e-12)
    assert policy.search.budget_floor == 0.9
    if policy.search.extraction != "argmax":  # only the published argmax extraction may undershoot
        assert 0.9 * (1 - 1e-9) <= used <= 1 + 1e-9, f"{method} used {used:.3f} of its budget"
    if not cls.runs_network:
        assert policy.search.macs_processed == 0
    else:
        assert policy.search.macs_processed > 0
    assert policy.search.hparams["method"] == method
    if cls.needs_teacher and cls.teacher_from == "proxy":  # the proxy teacher's training, from its checkpoint
        meta = torch.load(teacher(PROXY), weights_only=True)["meta"]
        assert (policy.search.teacher_macs, policy.search.teacher_wall_s) == (meta["macs_processed"], meta["wall_s"])
        assert policy.search.teacher_macs > 0
    else:
        assert (policy.search.teacher_macs, policy.search.teacher_wall_s) == (0.0, 0.0)
    if not cls.iterative:  # one-shot: no convergence point
        assert (policy.search.settled_step, policy.search.settled_macs) == (None, None)
    else:  # iterative: the argmax policy reached its final value at a recorded step of this search
        assert 0 < policy.search.settled_step <= policy.search.steps
        assert 0 < policy.search.settled_macs <= policy.search.macs_processed
    assert policy.provenance["git_commit"]


def test_settle_point_by_hand():
    from mpqbench.search import settle_point

    h = [{"step": 5, "macs": 10.0, "policy": "33,22"}, {"step": 10, "macs": 20.0, "policy": "32,22"},
         {"step": 15, "macs": 30.0, "policy": "33,22"}, {"step": 20, "macs": 40.0, "policy": "33,22"}]
    assert settle_point(h) == (15, 30.0)  # the policy of step 5 came back later: settled only from step 15
    assert settle_point(h[:1]) == (5, 10.0)
    assert settle_point([dict(r, policy="44,44") for r in h]) == (5, 10.0)
    assert settle_point([{"step": 5, "loss": 1.0}]) is None and settle_point([]) is None


def test_method_facts_are_declared():
    """Every registered class states its facts with the declared types (the suites, the leaderboard, the app and
    this test read them), and its smoke settings are hyper-parameters it has."""
    from mpqbench.search import ROLES

    for name in list_methods():
        cls = get_method(name)
        assert cls.name == name and cls.role in ROLES and cls.role != "ablation"  # ablations are suite entries
        assert all(isinstance(getattr(cls, f), bool) for f in ("needs_teacher", "searches_on_target", "runs_network",
                                                              "iterative"))
        cls.Hparams(**cls.smoke_hparams)
        assert cls.runs_network or not cls.iterative


def test_every_baseline_file_registers_a_method():
    # a new baselines/<name>.py is imported by discovery, so it is in list_methods() and in the contract above
    import pkgutil

    import baselines

    modules = {f"baselines.{m.name}" for m in pkgutil.iter_modules(baselines.__path__)}
    registered = {get_method(n).__module__ for n in list_methods()}
    assert modules and modules <= registered, f"files that register nothing: {sorted(modules - registered)}"
