"""A QAT fine-tune (quantized ResNet-20 with learnable LSQ steps) killed after an epoch and resumed ends
with exactly the weights and steps of an uninterrupted run (CPU, fixed seed)."""

import torch
from killswitch import killed_after_first_save

import mpqbench.train as train_mod
from mpqbench.data import TensorImageDataset
from mpqbench.models import get_model, searchable_layer_names
from mpqbench.pipeline import calibrate
from mpqbench.quant import quantize_model
from mpqbench.train import TrainConfig, train


def _data() -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 3
    x = torch.rand(40, 3, 8, 8, generator=g) * 0.3
    x[torch.arange(40), y] += 0.7
    return TensorImageDataset(x, y, mean=(0.5,) * 3, std=(0.25,) * 3, classes=("a", "b", "c"), crop_pad_px=1, flip=True)


def _quantized(ds, init_seed: int) -> torch.nn.Module:
    torch.manual_seed(init_seed)
    fp = get_model("resnet20", num_classes=3, in_channels=3, input_size=8, width=0.25)
    torch.manual_seed(0)  # the "FP checkpoint": identical start weights for every run
    fp.load_state_dict(get_model("resnet20", num_classes=3, in_channels=3, input_size=8, width=0.25).state_dict())
    bits = {n: (3, 2) for n in searchable_layer_names(fp)} | {"conv1": (8, 8), "fc": (8, 8)}
    model = quantize_model(fp, bits)
    calibrate(model, ds, batch_size=16, seed=0)
    return model


def test_quantized_finetune_kill_and_resume(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    ds = _data()
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=16, seed=0, device="cpu")
    reference = _quantized(ds, 1)
    train(reference, ds, cfg, ckpt_path=tmp_path / "ref.pt", progress=False)

    with killed_after_first_save(monkeypatch, train_mod):
        train(_quantized(ds, 1), ds, cfg, ckpt_path=tmp_path / "run.pt", progress=False)

    torch.manual_seed(999)
    resumed = _quantized(ds, 5)
    train(resumed, ds, cfg, ckpt_path=tmp_path / "run.pt", progress=False)
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert any("step" in k for k in ref_state), "the quantized model has LSQ steps"
    for name, value in ref_state.items():
        assert torch.equal(value, res_state[name]), name


def test_pretrain_is_reproducible_for_a_seed(tmp_path):
    """Two pretrain runs with the same seed (in one process, RNG advanced in between) give the same model."""
    from mpqbench.pipeline import pretrain

    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=3, device="cpu")
    kw = dict(arch="resnet20", dataset="digits", data_root=None, input_size=8, width=0.25, subset=128, cfg=cfg,
              progress=False)
    pretrain(out=tmp_path / "a.pt", **kw)
    torch.rand(100)  # whatever happened before must not matter
    pretrain(out=tmp_path / "b.pt", **kw)
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
