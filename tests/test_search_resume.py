"""The shared differentiable search checkpoints every epoch and a killed search resumes to the same result."""

import pytest
import torch
from killswitch import killed_after_first_save

import mpqbench.search.differentiable as diff_mod
from mpqbench.cost import SearchCostMeter, arch_cost
from mpqbench.data import load_split, subset
from mpqbench.search import SearchContext, get_method


def _ctx(work_dir, meter) -> SearchContext:
    cost = arch_cost("resnet20", input_size=8, num_classes=10, in_channels=1, width=0.25)
    ds = subset(load_split("digits", "train", input_size=8), count=96, seed=0)
    return SearchContext(
        arch="resnet20", proxy="digits", proxy_train=ds, num_classes=10, in_channels=1, input_size=8, width=0.25,
        target_macs=cost.macs, searchable=list(cost.searchable), fixed=list(cost.fixed), budget_name="w3a3",
        budget_bitops_g=sum(cost.macs[n] * 9 for n in cost.searchable) / 1e9, w_candidates=[2, 3, 4],
        a_candidates=[2, 3, 4], seed=0, device=torch.device("cpu"), meter=meter, progress=False, work_dir=work_dir,
    )


@pytest.mark.parametrize("method", ["edmips", "asga"])
def test_search_kill_and_resume(tmp_path, monkeypatch, method):
    torch.set_num_threads(1)
    cls = get_method(method)
    hp = cls.Hparams(epochs=3, batch_size=32, lr_alpha=0.5)
    ref = cls().search(_ctx(tmp_path / "ref", SearchCostMeter()), hp)

    (tmp_path / "run").mkdir()
    with killed_after_first_save(monkeypatch, diff_mod):
        cls().search(_ctx(tmp_path / "run", SearchCostMeter()), hp)
    assert (tmp_path / "run" / f"search-{method}.ckpt").exists()

    torch.manual_seed(4321)
    meter = SearchCostMeter()
    resumed = cls().search(_ctx(tmp_path / "run", meter), hp)
    assert resumed.layers == ref.layers
    assert resumed.extra["probs"] == ref.extra["probs"]
    # the periodic history (and with it the settle point) survives the kill
    assert [h["step"] for h in resumed.extra["history"]] == [h["step"] for h in ref.extra["history"]]
    assert [h["policy"] for h in resumed.extra["history"]] == [h["policy"] for h in ref.extra["history"]]
    assert (resumed.settled_step, resumed.settled_macs) == (ref.settled_step, ref.settled_macs)
    assert meter.steps == 9 and meter.macs_processed > 0  # 3 epochs × 3 steps, counted across the kill
    assert not (tmp_path / "run" / f"search-{method}.ckpt").exists(), "a finished search removes its checkpoint"
