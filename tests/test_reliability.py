"""Reliability of the pipeline's files and checks (the behaviours behind the bad-input table).

- a fine-tune's resume checkpoint is keyed by a hash of everything that determines the result: one written
  for another policy (or another FP file) is discarded with one warning line, and the run equals a clean one;
  the checkpoint of the same run is resumed silently;
- ``evaluate`` recomputes the record's cost on the deployed model instead of copying the policy's;
- atomic writes: the mode the umask gives, fsync before the rename (and of the folder after), no temp left
  by a failed write, stale temps of killed writes cleaned up, live ones kept;
- devices beyond the device count, seeds out of range and unwritable outputs are one-line user errors.

Tiny and CPU only: ResNet-20 at width 0.25 on digits (8 px), 256 images, FP checkpoints with random weights.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from killswitch import killed_after_first_save

import mpqbench.train as train_mod
from mpqbench.cli import main
from mpqbench.errors import UserError
from mpqbench.models import get_model
from mpqbench.utils import (atomic_path, check_seed, check_writable, check_writable_dir, remove_stale_temps,
                            resolve_device, torch_save, write_json)

ARCH, WIDTH, DATASET, SIZE = "resnet20", 0.25, "digits", 8
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run_cli(capsys, argv: list) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def _fp(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = get_model(ARCH, num_classes=10, in_channels=1, input_size=SIZE, width=WIDTH)
    meta = {"arch": ARCH, "dataset": DATASET, "num_classes": 10, "in_channels": 1, "input_size": SIZE, "width": WIDTH,
            "subset": None, "epochs": 1, "lr": 0.1, "batch_size": 64, "seed": 0, "top1": 10.0, "top5": 50.0,
            "loss": 2.3, "wall_s": 1.0, "macs_processed": 1, "init_weights": None, "precision": "fp32"}
    torch_save({"state_dict": model.state_dict(), "meta": meta}, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("reliability")
    for budget in ("w3a3", "w2a2"):
        assert main(["search", "--method", "uniform", "--arch", ARCH, "--width", str(WIDTH), "--proxy", DATASET,
                     "--target", DATASET, "--budget", budget, "--device", "cpu", "--no-progress",
                     "--out", str(d / f"policy_{budget}.json")]) == 0
    _fp(d / "fp.pt", 0)
    _fp(d / "fp_other.pt", 1)
    return {p.stem: p for p in d.iterdir()} | {"dir": d}


def _finetune(files, policy: str, out: Path, fp: Path | None = None, epochs: int = 2) -> list[str]:
    return ["finetune", "--policy", files[policy], "--fp", fp or files["fp"], "--dataset", DATASET, "--subset", "256",
            "--epochs", str(epochs), "--batch-size", "64", "--lr", "0.05", "--seed", "0", "--device", "cpu",
            "--no-progress", "--out", out]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------------------------------- B. resume key
def test_resume_of_another_policy_is_discarded_and_the_run_equals_a_clean_one(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "q.pt"
    resume = tmp_path / "q.pt.resume"
    with killed_after_first_save(monkeypatch, train_mod):  # policy A, killed after its first epoch
        main([str(a) for a in _finetune(files, "policy_w3a3", out)])
    assert resume.is_file() and not out.exists()
    key = torch.load(resume, weights_only=True)["run_key"]
    assert set(key["fields"]) >= {"policy_sha256", "fp_sha256", "dataset", "subset", "epochs", "lr", "batch_size",
                                  "weight_decay", "seed", "precision"}

    rc, _, err = run_cli(capsys, _finetune(files, "policy_w2a2", out))  # policy B, same --out
    assert rc == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), err
    assert "q.pt.resume" in lines[0] and "policy_sha256" in lines[0] and "starting clean" in lines[0]
    assert not resume.exists()

    clean = tmp_path / "clean.pt"
    rc, _, err = run_cli(capsys, _finetune(files, "policy_w2a2", clean))
    assert rc == 0 and err == ""
    _assert_same(out, clean)
    meta = torch.load(out, weights_only=True)["meta"]
    assert set(map(tuple, meta["policy_bits"].values())) >= {(2, 2), (8, 8)}


def test_resume_of_another_fp_file_is_discarded(files, tmp_path, capsys, monkeypatch):
    out, fp = tmp_path / "q.pt", tmp_path / "fp.pt"
    fp.write_bytes(files["fp"].read_bytes())
    with killed_after_first_save(monkeypatch, train_mod):
        main([str(a) for a in _finetune(files, "policy_w3a3", out, fp=fp)])
    fp.write_bytes(files["fp_other"].read_bytes())  # the same path, other weights
    rc, _, err = run_cli(capsys, _finetune(files, "policy_w3a3", out, fp=fp))
    assert rc == 0, err
    assert len(err.splitlines()) == 1 and "fp_sha256" in err and err.startswith("warning: ")
    clean = tmp_path / "clean.pt"
    assert run_cli(capsys, _finetune(files, "policy_w3a3", clean, fp=files["fp_other"]))[0] == 0
    _assert_same(out, clean)


def test_resume_of_the_same_run_is_resumed_silently(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "q.pt"
    with killed_after_first_save(monkeypatch, train_mod):
        main([str(a) for a in _finetune(files, "policy_w3a3", out)])
    rc, _, err = run_cli(capsys, _finetune(files, "policy_w3a3", out))
    assert rc == 0 and err == ""
    ref = tmp_path / "ref.pt"
    assert run_cli(capsys, _finetune(files, "policy_w3a3", ref))[0] == 0
    _assert_same(out, ref)


# ---------------------------------------------------------------------------------------------- C. evaluate
def test_evaluate_recomputes_the_cost_on_the_deployed_model(files, tmp_path, capsys):
    from mpqbench.cost import complexity_report

    qat = tmp_path / "q.pt"
    assert run_cli(capsys, _finetune(files, "policy_w3a3", qat, epochs=1))[0] == 0
    policy = json.loads(files["policy_w3a3"].read_text())
    tampered = dict(policy, achieved={k: (v * 10 if isinstance(v, float) else v) for k, v in policy["achieved"].items()})
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    rec_path = tmp_path / "r.json"
    rc, _, err = run_cli(capsys, ["evaluate", "--ckpt", qat, "--policy", tmp_path / "tampered.json", "--fp", files["fp"],
                                  "--dataset", DATASET, "--suite", "t", "--device", "cpu", "--out", rec_path])
    assert rc == 0, err
    achieved = json.loads(rec_path.read_text())["achieved"]
    t = complexity_report(ARCH, input_size=SIZE, num_classes=10, in_channels=1, width=WIDTH, policy="w3a3")["totals"]
    for key in ("bitops_g_all", "bitops_g_searchable", "size_mb", "avg_w_bits", "avg_a_bits"):
        assert achieved[key] == pytest.approx(t[key], rel=1e-12), key
        assert achieved[key] == pytest.approx(policy["achieved"][key], rel=1e-12), key  # same geometry as the search
    assert achieved["budget_used"] == pytest.approx(t["bitops_g_searchable"] / policy["budget"]["bitops_g"])
    assert oct(stat.S_IMODE(rec_path.stat().st_mode)) == oct(0o666 & ~_umask())


# ---------------------------------------------------------------------------------------------- D. atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)], ids=["umask022", "umask002"])
def test_atomic_writes_get_the_mode_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        torch_save({"x": torch.zeros(2)}, tmp_path / "b.pt")
        (tmp_path / "c.json").write_text("old")
        (tmp_path / "c.json").chmod(0o600)
        write_json(tmp_path / "c.json", {"x": 2})  # replacing a file: the new one has the umask's mode too
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt", "c.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pt", "c.json"]


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json(tmp_path / "a.json", {"x": 1})
    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("earlier")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".a.json.") and tmp.name.endswith(".tmp")
            assert str(os.getpid()) in tmp.name
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_killed_writes_are_removed_live_ones_kept(tmp_path):
    from mpqbench.utils import _host

    host = _host()
    dead = tmp_path / f".a.json.{host}-{_dead_pid()}.0123abcd.tmp"  # its writer is gone
    live = tmp_path / f".a.json.{host}-{os.getpid()}.89abcdef.tmp"  # a write in progress (this process)
    far = tmp_path / ".a.json.otherhost-1.00000000.tmp"  # another host's, recent: may be live
    old_far = tmp_path / ".a.json.otherhost-2.11111111.tmp"  # another host's, untouched for two hours
    legacy = tmp_path / ".a.json.k3j4h5g6.tmp"  # an older mpqbench's mkstemp name, two hours old
    other = tmp_path / f".a.json.bak.{host}-{_dead_pid()}.22222222.tmp"  # the temp of another file (a.json.bak)
    for p in (dead, live, far, old_far, legacy, other):
        p.write_text("partial")
    two_hours_ago = time.time() - 7200
    for p in (old_far, legacy):
        os.utime(p, (two_hours_ago, two_hours_ago))
    write_json(tmp_path / "a.json", {"x": 1})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["a.json", live.name, far.name, other.name])
    assert remove_stale_temps(tmp_path / "a.json") == []


# ---------------------------------------------------------------------------------------------- A. checks
def test_a_cuda_device_beyond_the_count_names_the_devices(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"'cuda:7' does not exist \(1 CUDA device\).*one of: cpu, cuda:0"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    rc, _, err = run_cli(capsys, ["info", "--device", "cuda:7"])
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "cuda:0" in err


def test_resolve_device_refuses_what_the_machine_lacks():
    with pytest.raises(UserError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs CUDA"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_seed_range():
    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1
    for bad in (-1, 2**32, 99999999999):
        with pytest.raises(UserError, match=r"\[0, 4294967295\]"):
            check_seed(bad)
        with pytest.raises(UserError, match="seed"):
            train_mod.TrainConfig(epochs=1, lr=0.1, batch_size=8, seed=bad)


def test_check_writable(tmp_path):
    (tmp_path / "f").write_text("x")
    assert check_writable(tmp_path / "new" / "deeper" / "out.json") == tmp_path / "new" / "deeper" / "out.json"
    assert check_writable(tmp_path / "f") == tmp_path / "f"  # an existing file is replaced
    assert check_writable_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"], "a check creates nothing"
    with pytest.raises(UserError, match="existing folder"):
        check_writable(tmp_path)
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable(tmp_path / "f" / "out.json")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable_dir(tmp_path / "f")


@pytest.mark.skipif(IS_ROOT, reason="chmod does not stop root from writing")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="read-only"):
            check_writable(ro / "sub" / "out.json")
        with pytest.raises(UserError, match="read-only"):
            check_writable_dir(ro)
    finally:
        ro.chmod(0o755)


def test_a_read_only_folder_is_refused_before_any_work_even_when_simulated(tmp_path, capsys, monkeypatch):
    """The read-only branch as root sees it in CI (chmod does not bind root): ``os.access`` says no."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode, **kw))
    for argv in (["search", "--method", "uniform", "--arch", ARCH, "--proxy", DATASET, "--target", DATASET,
                  "--budget", "w3a3", "--device", "cpu", "--out", ro / "sub" / "p.json"],
                 ["aggregate", "--runs", tmp_path, "--out-dir", ro]):
        rc, out, err = run_cli(capsys, argv)
        assert rc == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith("error: ") and "read-only" in err and str(ro) in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ro"]
