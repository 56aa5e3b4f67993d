"""SearchContext.load_target_fp: the target FP start model rebuilt at the proxy geometry (for methods that
start from the target-trained model and see proxy data only)."""

import pytest
import torch

from mpqbench.data import load_split, subset
from mpqbench.errors import UserError
from mpqbench.search import SearchContext
from searchkit import tiny_context


@pytest.fixture(scope="module")
def target_fp(tmp_path_factory):
    from mpqbench.pipeline import pretrain
    from mpqbench.train import TrainConfig

    out = tmp_path_factory.mktemp("fp") / "fp_fashion.pt"
    pretrain(arch="resnet20", dataset="fashion-mnist", data_root=None, input_size=16, width=0.25, subset=128,
             cfg=TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=0, device="cpu"), out=out, progress=False)
    return out


def _ctx(teacher, *, width=0.25, num_classes=10) -> SearchContext:
    ds = subset(load_split("digits", "train", input_size=8), count=32, seed=0)
    return tiny_context(teacher, proxy_train=ds, width=width, num_classes=num_classes, budget_g=1.0)


def test_weights_are_the_target_models_at_the_proxy_geometry(target_fp):
    saved = torch.load(target_fp, weights_only=True)["state_dict"]
    model = _ctx(target_fp).load_target_fp()
    own = model.state_dict()
    assert set(own) == set(saved) and all(torch.equal(own[k], saved[k]) for k in own)
    fresh = _ctx(target_fp).load_target_fp(new_head=True).state_dict()
    assert not torch.equal(fresh["fc.weight"], saved["fc.weight"]) and torch.equal(fresh["fc.bias"],
                                                                                     torch.zeros(10))
    assert all(torch.equal(fresh[k], saved[k]) for k in own if not k.startswith("fc."))
    # a proxy with other classes gets a fresh head, seeded: the same twice
    a, b = (_ctx(target_fp, num_classes=4).load_target_fp().state_dict()["fc.weight"] for _ in range(2))
    assert a.shape[0] == 4 and torch.equal(a, b)


def test_another_width_is_one_clear_error(target_fp):
    with pytest.raises(UserError, match=r"\(arch, channels, width\)"):
        _ctx(target_fp, width=0.5).load_target_fp()
