"""The shared differentiable search checkpoints every epoch and a killed search resumes to the same result."""

import pytest
import torch
from killswitch import killed_after_first_save

import mpqbench.search as search_mod
from mpqbench.cost import CostMeter, arch_cost
from mpqbench.data import load_split, subset
from mpqbench.search import SearchContext, get_method
from searchkit import tiny_context


def _ctx(work_dir, meter, key="k" * 64) -> SearchContext:
    cost = arch_cost("resnet20", input_size=8, num_classes=10, in_channels=1, width=0.25)
    ds = subset(load_split("digits", "train", input_size=8), count=96, seed=0)
    return tiny_context(None, proxy_train=ds, budget_g=sum(cost.macs[n] * 9 for n in cost.searchable) / 1e9,
                        meter=meter, work_dir=work_dir, state_key=key, proxy_dataset=None)


@pytest.mark.parametrize("method", ["edmips", "asga"])
def test_search_kill_and_resume(tmp_path, monkeypatch, method):
    torch.set_num_threads(1)
    cls = get_method(method)
    hp = cls.Hparams(epochs=3, batch_size=32, lr_alpha=0.5)
    ref = cls().search(_ctx(tmp_path / "ref", CostMeter()), hp)

    (tmp_path / "run").mkdir()
    with killed_after_first_save(monkeypatch, search_mod):
        cls().search(_ctx(tmp_path / "run", CostMeter()), hp)
    ckpt = _ctx(tmp_path / "run", None).state_path()
    assert ckpt.exists() and ckpt.name == "search-kkkkkkkkkkkkkkkk.ckpt"

    torch.manual_seed(4321)
    meter = CostMeter()
    resumed = cls().search(_ctx(tmp_path / "run", meter), hp)
    assert resumed.layers == ref.layers
    assert resumed.extra["probs"] == ref.extra["probs"]
    # the periodic history (and with it the settle point) survives the kill
    assert [h["step"] for h in resumed.extra["history"]] == [h["step"] for h in ref.extra["history"]]
    assert [h["policy"] for h in resumed.extra["history"]] == [h["policy"] for h in ref.extra["history"]]
    assert (resumed.settled_step, resumed.settled_macs) == (ref.settled_step, ref.settled_macs)
    assert meter.steps == 9 and meter.macs_processed > 0  # 3 epochs × 3 steps, counted across the kill
    assert not ckpt.exists(), "a finished search removes its checkpoint"


def test_a_checkpoint_of_another_search_is_never_resumed(tmp_path, monkeypatch, capfd):
    """A killed search with other settings (another key) leaves a checkpoint in the same folder: the next search
    removes it with a warning and gives exactly the clean result; a corrupt checkpoint of its own key too."""
    torch.set_num_threads(1)
    cls = get_method("asga")
    hp = cls.Hparams(epochs=2, batch_size=32, lr_alpha=0.5)
    ref = cls().search(_ctx(tmp_path / "ref", CostMeter()), hp)

    run = tmp_path / "run"
    run.mkdir()
    with killed_after_first_save(monkeypatch, search_mod):  # another search (other key, other lr) killed here
        cls().search(_ctx(run, CostMeter(), key="o" * 64), cls.Hparams(epochs=2, batch_size=32, lr_alpha=5.0))
    other = _ctx(run, None, key="o" * 64).state_path()
    assert other.exists()
    capfd.readouterr()
    out = cls().search(_ctx(run, CostMeter()), hp)
    assert "is the checkpoint of another search" in capfd.readouterr().err and not other.exists()
    assert out.layers == ref.layers and out.extra["probs"] == ref.extra["probs"]

    own = _ctx(run, None).state_path()
    own.write_bytes(b"not a checkpoint")
    again = cls().search(_ctx(run, CostMeter()), hp)
    assert "is unusable" in capfd.readouterr().err
    assert again.extra["probs"] == ref.extra["probs"]


def test_a_diverging_search_stops_with_one_clear_error(tmp_path):
    from mpqbench.errors import UserError

    cls = get_method("edmips")
    with pytest.raises(UserError, match=r"the search loss is nan at step 2 .*diverged"):
        cls().search(_ctx(None, CostMeter()), cls.Hparams(epochs=1, batch_size=32, lr_w=float("nan")))
