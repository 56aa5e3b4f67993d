"""The bad-input table: every way a user can get a command wrong, one row each.

The contract (architecture.md, Commands): bad input ends in exactly one stderr line ``error: <what is wrong;
what to do>``, exit status 2, no traceback, and no file written or changed. Whatever can be validated is
validated before any work: for the rows not marked ``late`` the data loaders, the training loop and the
evaluation are replaced by a trap, so a check that runs only after the work (a 30 s search that then finds
its ``--out`` unwritable) fails the row.

Each row: an id, the argv (built from the shared inputs and the row's own folder), a regex the error line
must match, an optional setup that puts the bad file in place, and marks. The row's folder (the cwd of the
command) and the shared inputs are snapshotted (paths, sizes, mtimes, contents) before and after.

Inputs are tiny: ResNet-20 at width 0.25, Fashion-MNIST at 16 px as the target (digits as proxy), FP
checkpoints with random weights (their geometry is what is checked), one real 1-epoch fine-tune on 256
images for the fine-tuned checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from mpqbench.cli import main
from mpqbench.models import get_model
from mpqbench.utils import torch_save

ARCH, WIDTH = "resnet20", 0.25
TARGET, SIZE = "fashion-mnist", 16
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
not_root = pytest.mark.skipif(IS_ROOT, reason="chmod does not stop root from writing")


def fashion_present() -> bool:
    from mpqbench.data import dataset_status

    return any(d["name"] == TARGET and d["present"] for d in dataset_status())


pytestmark = pytest.mark.skipif(not fashion_present(), reason="Fashion-MNIST not installed "
                                "(apt-get install -y dataset-fashion-mnist)")

SA = ["--arch", ARCH, "--proxy", "digits", "--target", TARGET, "--width", str(WIDTH), "--proxy-input-size", "8",
      "--target-input-size", str(SIZE), "--device", "cpu", "--no-progress"]


# ---------------------------------------------------------------------------------------------- helpers
def run_cli(capsys, argv: list) -> tuple[int, str, str]:
    """``main(argv)`` in process → (exit status, stdout, stderr); argparse's SystemExit is an exit status."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` → (kind, mode, size, mtime_ns, sha256 of a file's bytes)."""
    snap: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        snap[str(path.relative_to(root))] = ("dir" if path.is_dir() else "file", st.st_mode, st.st_size,
                                             st.st_mtime_ns, digest)
    return snap


def fp_meta(**over: Any) -> dict[str, Any]:
    meta = {"arch": ARCH, "dataset": TARGET, "num_classes": 10, "in_channels": 1, "input_size": SIZE,
            "width": WIDTH, "subset": 256, "epochs": 1, "lr": 0.05, "batch_size": 64, "seed": 0, "top1": 10.0,
            "top5": 50.0, "loss": 2.3, "wall_s": 1.0, "macs_processed": 1, "init_weights": None,
            "precision": "fp32"}
    meta.update(over)
    return {k: v for k, v in meta.items() if v is not ...}


def save_fp(path: Path, *, state: dict | None = None, model_kw: dict | None = None, **meta: Any) -> None:
    m = fp_meta(**meta)
    kw = {"arch": m.get("arch", ARCH), "num_classes": m.get("num_classes", 10), "in_channels": m["in_channels"],
          "input_size": m["input_size"], "width": m.get("width", WIDTH), **(model_kw or {})}
    torch.manual_seed(0)
    model = get_model(kw.pop("arch"), **kw)
    torch_save({"state_dict": model.state_dict() if state is None else state, "meta": m}, path)


class _Evil:
    """Unpickling this would run a shell command; ``weights_only`` loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_inputs(d: Path) -> dict[str, Path]:
    """The shared input files: policies, FP checkpoints good and bad, a real fine-tuned checkpoint."""
    for arch, name in ((ARCH, "policy.json"), ("resnet18", "policy_r18.json")):
        args = ["search", *SA, "--method", "uniform", "--budget", "w3a3", "--out", d / name]
        args[args.index(ARCH)] = arch
        assert main([str(a) for a in args]) == 0
    policy = json.loads((d / "policy.json").read_text())
    (d / "policy_w4a4.json").write_text(json.dumps(dict(policy, layers={n: {"w": 4, "a": 4} for n in policy["layers"]})))
    (d / "policy_nosearch.json").write_text(json.dumps({k: v for k, v in policy.items() if k not in ("search", "achieved")}))
    (d / "bad.json").write_text('{"arch": "resnet20", "layers": {')
    (d / "schema.json").write_text(json.dumps(dict(policy, layers={n: {"w": "three", "a": 3} for n in policy["layers"]})))

    save_fp(d / "fp.pt")
    save_fp(d / "fp_noarch.pt", arch=...)
    save_fp(d / "fp_w05.pt", width=0.5)
    save_fp(d / "fp_c7.pt", num_classes=7)
    save_fp(d / "fp_r18.pt", arch="resnet18")
    save_fp(d / "fp_digits.pt", dataset="digits")
    save_fp(d / "fp_cifar.pt", dataset="cifar10", in_channels=3, input_size=32)
    good = torch.load(d / "fp.pt", weights_only=True)["state_dict"]
    save_fp(d / "fp_missing.pt", state={k: v for k, v in good.items() if k != "fc.bias"})
    save_fp(d / "fp_unexpected.pt", state={**good, "extra.weight": torch.zeros(3)})
    torch.manual_seed(0)
    wide = get_model(ARCH, num_classes=10, in_channels=1, input_size=SIZE, width=0.5).state_dict()
    save_fp(d / "fp_shapes.pt", state=wide)  # meta says width 0.25, the tensors are width 0.5
    (d / "garbage.pt").write_bytes(bytes(range(256)) * 8)
    torch.save({"weights": torch.zeros(3)}, d / "not_mpqbench.pt")
    torch.save({"state_dict": {}, "meta": _Evil(d / "pwned")}, d / "evil.pt")
    (d / "empty").mkdir()

    # A real fine-tune (W3A3) of fp.pt: its meta records the policy's bits.
    rc = main(["finetune", "--policy", str(d / "policy.json"), "--fp", str(d / "fp.pt"), "--dataset", TARGET,
               "--subset", "256", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
               "--out", str(d / "qat.pt")])
    assert rc == 0
    # A W3A3 QAT model of the width-0.5 FP model (as a fine-tune without the width check would make it).
    from mpqbench.policy import Policy
    from mpqbench.quant import quantize_model

    torch.manual_seed(0)
    m05 = get_model(ARCH, num_classes=10, in_channels=1, input_size=SIZE, width=0.5)
    q05 = quantize_model(m05, Policy.load(d / "policy.json").bits())
    qmeta = dict(torch.load(d / "qat.pt", weights_only=True)["meta"])
    torch_save({"state_dict": q05.state_dict(), "meta": qmeta}, d / "qat_w05.pt")
    return {p.stem if p.suffix else p.name: p for p in d.iterdir()} | {"dir": d}


@pytest.fixture(scope="module")
def inp(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    return make_inputs(tmp_path_factory.mktemp("inputs"))


class WorkStarted(BaseException):
    """Raised by the trap: the command began loading data / training / evaluating before it failed."""


def _forbid_work(monkeypatch) -> None:
    import mpqbench.pipeline as pipeline
    import mpqbench.search.run as search_run

    def trap(*_a, **_k):
        raise WorkStarted

    for module, name in ((pipeline, "load_split"), (pipeline, "_train_split"), (pipeline, "train"),
                         (pipeline, "evaluate"), (pipeline, "calibrate"), (search_run, "load_split")):
        monkeypatch.setattr(module, name, trap)


# ---------------------------------------------------------------------------------------------- the table
# argv builders get (the shared inputs, the row's own folder)


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[dict, Path], list]
    match: str
    setup: Callable[[Path], None] | None = None
    late: bool = False  # the error comes while loading data or searching: the work trap is off
    marks: tuple = ()


def _search(*extra: str, method: str = "uniform", budget: str = "w3a3") -> Callable[[dict, Path], list]:
    return lambda i, o: ["search", *SA, "--method", method, "--budget", budget, *extra, "--out", o / "p.json"]


def _search_out(out: Callable[[Path], Any]) -> Callable[[dict, Path], list]:
    return lambda i, o: ["search", *SA, "--method", "uniform", "--budget", "w3a3", "--out", out(o)]


PRE = ["pretrain", "--arch", ARCH, "--dataset", "digits", "--input-size", "8", "--width", str(WIDTH), "--epochs", "1",
       "--subset", "256", "--device", "cpu", "--no-progress"]


def _pretrain(*extra: str, out: Callable[[Path], Any] = lambda o: o / "fp.pt") -> Callable[[dict, Path], list]:
    return lambda i, o: [*PRE, *extra, "--out", out(o)]


def _ft(*extra: Any, policy: str = "policy", fp: str = "fp", dataset: str = TARGET,
        out: Callable[[Path], Any] = lambda o: o / "q.pt") -> Callable[[dict, Path], list]:
    return lambda i, o: ["finetune", "--policy", i[policy] if policy in i else i["dir"] / policy,
                         "--fp", i[fp] if fp in i else i["dir"] / fp, "--dataset", dataset, "--subset", "256",
                         "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
                         *extra, "--out", out(o)]


def _ev(*extra: Any, ckpt: str = "qat", policy: str = "policy", fp: str = "fp", dataset: str = TARGET,
        out: Callable[[Path], Any] = lambda o: o / "r.json") -> Callable[[dict, Path], list]:
    return lambda i, o: ["evaluate", "--ckpt", i[ckpt] if ckpt in i else i["dir"] / ckpt,
                         "--policy", i[policy] if policy in i else i["dir"] / policy,
                         "--fp", i[fp] if fp in i else i["dir"] / fp, "--dataset", dataset, "--suite", "t",
                         "--device", "cpu", "--no-progress", *extra, "--out", out(o)]


def _file(name: str, data: bytes = b"x") -> Callable[[Path], None]:
    return lambda o: (o / name).write_bytes(data)


def _dir(name: str) -> Callable[[Path], None]:
    return lambda o: (o / name).mkdir(parents=True)


def _readonly(name: str) -> Callable[[Path], None]:
    def setup(o: Path) -> None:
        (o / name).mkdir()
        (o / name).chmod(0o555)
    return setup


UNDER_FILE = r"is a file, not a folder"
IS_DIR = r"existing folder"
READ_ONLY = r"read-only"
NEEDS_CUDA = r"cuda.*(needs CUDA|does not exist).*one of: cpu"
# the CUDA rows mean what they say on a machine without CUDA, or (cuda:7) with fewer than 8 GPUs
cuda_absent = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: 'cuda' exists here")
cuda_few = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() > 7, reason="8+ GPUs")

CASES: list[Case] = [
    # -- A. outputs that cannot be written: found before any work ---------------------------------------------
    Case("search-out-is-dir", _search_out(lambda o: o), IS_DIR),
    Case("search-out-under-file", _search_out(lambda o: o / "afile" / "p.json"), UNDER_FILE, _file("afile")),
    Case("search-out-readonly", _search_out(lambda o: o / "ro" / "p.json"), READ_ONLY, _readonly("ro"),
         marks=(not_root,)),
    Case("search-edmips-out-under-file", lambda i, o: ["search", *SA, "--method", "edmips", "--epochs", "0.05",
                                                       "--hp", "batch_size=64", "--budget", "w3a3",
                                                       "--out", o / "afile" / "p.json"], UNDER_FILE, _file("afile")),
    Case("search-work-dir-under-file", _search("--work-dir", "afile/state"), UNDER_FILE, _file("afile")),
    Case("pretrain-out-is-dir", _pretrain(out=lambda o: o), IS_DIR),
    Case("pretrain-out-under-file", _pretrain(out=lambda o: o / "afile" / "fp.pt"), UNDER_FILE, _file("afile")),
    Case("pretrain-out-json-is-dir", _pretrain(), r"fp\.pt\.json.*existing folder", _dir("fp.pt.json")),
    Case("pretrain-out-readonly", _pretrain(out=lambda o: o / "ro" / "fp.pt"), READ_ONLY, _readonly("ro"),
         marks=(not_root,)),
    Case("finetune-out-is-dir", _ft(out=lambda o: o), IS_DIR),
    Case("finetune-out-under-file", _ft(out=lambda o: o / "afile" / "q.pt"), UNDER_FILE, _file("afile")),
    Case("finetune-resume-is-dir", _ft(), r"q\.pt\.resume.*existing folder", _dir("q.pt.resume")),
    Case("finetune-out-readonly", _ft(out=lambda o: o / "ro" / "q.pt"), READ_ONLY, _readonly("ro"), marks=(not_root,)),
    Case("evaluate-out-is-dir", _ev(out=lambda o: o), IS_DIR),
    Case("evaluate-out-under-file", _ev(out=lambda o: o / "afile" / "runs" / "r.json"), UNDER_FILE, _file("afile")),
    Case("evaluate-out-readonly", _ev(out=lambda o: o / "ro" / "r.json"), READ_ONLY, _readonly("ro"), marks=(not_root,)),
    Case("aggregate-out-dir-is-file", lambda i, o: ["aggregate", "--runs", i["empty"], "--out-dir", o / "afile"],
         UNDER_FILE, _file("afile")),
    Case("aggregate-out-dir-under-file", lambda i, o: ["aggregate", "--runs", i["empty"], "--out-dir", o / "afile" / "res"],
         UNDER_FILE, _file("afile")),
    Case("aggregate-out-dir-readonly", lambda i, o: ["aggregate", "--runs", i["empty"], "--out-dir", o / "ro"],
         READ_ONLY, _readonly("ro"), marks=(not_root,)),
    Case("figures-out-dir-is-file", lambda i, o: ["figures", "--runs", i["empty"], "--out-dir", o / "afile"],
         UNDER_FILE, _file("afile")),
    Case("figures-out-dir-readonly", lambda i, o: ["figures", "--runs", i["empty"], "--out-dir", o / "ro"],
         READ_ONLY, _readonly("ro"), marks=(not_root,)),
    # -- A. seeds: [0, 2**32-1] ------------------------------------------------------------------------------
    Case("search-seed-negative", _search("--seed", "-1"), r"--seed.*\[0, 4294967295\]"),
    Case("search-seed-too-large", _search("--seed", "99999999999"), r"--seed.*\[0, 4294967295\]"),
    Case("pretrain-seed-negative", _pretrain("--seed", "-1"), r"--seed.*\[0, 4294967295\]"),
    Case("pretrain-seed-too-large", _pretrain("--seed", "99999999999"), r"--seed.*\[0, 4294967295\]"),
    Case("finetune-seed-negative", _ft("--seed", "-1"), r"--seed.*\[0, 4294967295\]"),
    Case("finetune-seed-too-large", _ft("--seed", "4294967296"), r"--seed.*\[0, 4294967295\]"),
    Case("search-seed-not-integer", _search("--seed", "1.5"), r"--seed.*integer"),
    # -- A. devices ------------------------------------------------------------------------------------------
    Case("search-device-unknown", lambda i, o: [*_search()(i, o), "--device", "tpu9"], r"tpu9.*one of: cpu"),
    Case("pretrain-device-unknown", _pretrain("--device", "tpu9"), r"tpu9.*one of: cpu"),
    Case("finetune-device-unknown", _ft("--device", "tpu9"), r"tpu9.*one of: cpu"),
    Case("evaluate-device-unknown", _ev("--device", "tpu9"), r"tpu9.*one of: cpu"),
    Case("info-device-unknown", lambda i, o: ["info", "--device", "tpu9"], r"tpu9.*one of: cpu"),
    Case("search-device-cuda-absent", lambda i, o: [*_search()(i, o), "--device", "cuda"], NEEDS_CUDA,
         marks=(cuda_absent,)),
    Case("finetune-device-cuda-absent", _ft("--device", "cuda"), NEEDS_CUDA, marks=(cuda_absent,)),
    Case("pretrain-device-cuda7", _pretrain("--device", "cuda:7"), r"cuda:7.*one of: cpu", marks=(cuda_few,)),
    Case("evaluate-device-cuda7", _ev("--device", "cuda:7"), r"cuda:7.*one of: cpu", marks=(cuda_few,)),
    # -- A. sizes and counts, at parse time ------------------------------------------------------------------
    Case("pretrain-subset-0", _pretrain("--subset", "0"), r"--subset.*>= 1"),
    Case("finetune-subset-0", _ft("--subset", "0"), r"--subset.*>= 1"),
    Case("pretrain-input-size-0", _pretrain("--input-size", "0"), r"--input-size.*>= 1"),
    Case("search-proxy-subset-0", _search("--proxy-subset", "0"), r"--proxy-subset.*>= 1"),
    Case("search-proxy-input-size-0", _search("--proxy-input-size", "0"), r"--proxy-input-size.*>= 1"),
    Case("search-target-input-size-0", _search("--target-input-size", "0"), r"--target-input-size.*>= 1"),
    Case("search-batch-size-0", _search("--batch-size", "0"), r"--batch-size.*>= 1"),
    Case("pretrain-batch-size-0", _pretrain("--batch-size", "0"), r"--batch-size.*>= 1"),
    Case("finetune-batch-size-0", _ft("--batch-size", "0"), r"--batch-size.*>= 1"),
    Case("evaluate-batch-size-0", _ev("--batch-size", "0"), r"--batch-size.*>= 1"),
    Case("pretrain-epochs-negative", _pretrain("--epochs", "-1"), r"--epochs.*>= 0"),
    Case("finetune-epochs-negative", _ft("--epochs", "-1"), r"--epochs.*>= 1"),
    Case("finetune-epochs-0", _ft("--epochs", "0"), r"--epochs.*>= 1"),
    Case("search-epochs-0", _search("--epochs", "0", method="edmips"), r"--epochs.*> 0"),
    Case("pretrain-lr-0", _pretrain("--lr", "0"), r"--lr.*> 0"),
    Case("finetune-lr-0", _ft("--lr", "0"), r"--lr.*> 0"),
    Case("finetune-lr-nan", _ft("--lr", "nan"), r"--lr.*> 0"),
    Case("finetune-weight-decay-negative", _ft("--weight-decay", "-1"), r"--weight-decay.*>= 0"),
    Case("search-width-0", _search("--width", "0"), r"--width.*> 0"),
    Case("pretrain-width-0", _pretrain("--width", "0"), r"--width.*> 0"),
    Case("complexity-width-0", lambda i, o: ["complexity", "--arch", ARCH, "--width", "0"], r"--width.*> 0"),
    Case("complexity-input-size-0", lambda i, o: ["complexity", "--arch", ARCH, "--input-size", "0"],
         r"--input-size.*>= 1"),
    # -- A. pretrain --epochs 0 without --weights: a random "FP" model -----------------------------------------
    Case("pretrain-epochs-0-without-weights", _pretrain("--epochs", "0"), r"--epochs 0.*--weights"),
    Case("pretrain-weights-missing", _pretrain("--weights", "nope.pt"), r"nope\.pt"),
    # -- A. FP checkpoints that do not fit ---------------------------------------------------------------------
    Case("finetune-fp-no-arch", _ft(fp="fp_noarch"), r"fp_noarch\.pt has no meta\.arch"),
    Case("evaluate-fp-no-arch", _ev(fp="fp_noarch"), r"fp_noarch\.pt has no meta\.arch"),
    Case("finetune-fp-other-width", _ft(fp="fp_w05"), r"width 0\.25.*width 0\.5"),
    Case("evaluate-fp-other-width", _ev(ckpt="qat_w05", fp="fp_w05"), r"width 0\.25.*width 0\.5"),
    Case("finetune-fp-other-arch", _ft(fp="fp_r18"), r"policy is for resnet20.*resnet18"),
    Case("evaluate-fp-other-arch", _ev(fp="fp_r18"), r"policy is for resnet20.*resnet18"),
    Case("finetune-fp-other-num-classes", _ft(fp="fp_c7"), r"7 classes.*fashion-mnist has 10"),
    Case("evaluate-fp-other-num-classes", _ev(fp="fp_c7"), r"7 classes.*fashion-mnist has 10"),
    Case("finetune-fp-missing-keys", _ft(fp="fp_missing"), r"missing keys: fc\.bias"),
    Case("evaluate-fp-missing-keys", _ev(fp="fp_missing"), r"missing keys: fc\.bias"),
    Case("finetune-fp-unexpected-keys", _ft(fp="fp_unexpected"), r"unexpected keys: extra\.weight"),
    Case("finetune-fp-shapes-not-meta", _ft(fp="fp_shapes"), r"other shapes.*width 0\.25"),
    Case("finetune-fp-other-dataset", _ft(fp="fp_digits"), r"trained on digits, not fashion-mnist"),
    Case("evaluate-fp-other-dataset", _ev(fp="fp_digits"), r"trained on digits, not fashion-mnist"),
    Case("finetune-fp-garbage", _ft(fp="garbage"), r"garbage\.pt cannot be read"),
    Case("finetune-fp-pickle-with-code", _ft(fp="evil"), r"evil\.pt cannot be read"),
    Case("evaluate-ckpt-pickle-with-code", _ev(ckpt="evil"), r"evil\.pt cannot be read"),
    Case("finetune-fp-not-mpqbench", _ft(fp="not_mpqbench"), r"not an mpqbench checkpoint"),
    Case("finetune-fp-missing", _ft(fp="nope.pt"), r"nope\.pt does not exist"),
    # -- A. a corrupt resume file ------------------------------------------------------------------------------
    Case("finetune-resume-corrupt", _ft(), r"q\.pt\.resume cannot be read.*delete it", _file("q.pt.resume", b"\0junk")),
    Case("finetune-resume-not-a-checkpoint", _ft(), r"q\.pt\.resume.*delete it",
         lambda o: torch.save({"epoch": 1}, o / "q.pt.resume")),
    Case("pretrain-resume-corrupt", _pretrain(), r"fp\.pt\.resume cannot be read.*delete it",
         _file("fp.pt.resume", b"\0junk")),
    # -- C. evaluate: the checkpoint must be the policy's --------------------------------------------------------
    Case("evaluate-policy-edited-w4a4", _ev(policy="policy_w4a4"), r"fine-tuned with W3A3 at layer .*has W4A4"),
    Case("evaluate-ckpt-is-fp", _ev(ckpt="fp"), r"does not match the policy"),
    Case("evaluate-ckpt-garbage", _ev(ckpt="garbage"), r"garbage\.pt cannot be read"),
    Case("evaluate-ckpt-missing", _ev(ckpt="nope.pt"), r"nope\.pt does not exist"),
    Case("evaluate-policy-no-search", _ev(policy="policy_nosearch"), r"no search/achieved"),
    Case("evaluate-policy-other-arch", _ev(policy="policy_r18"), r"resnet18"),
    # -- names, budgets, hyper-parameters, labels (held before this table) --------------------------------------
    Case("search-unknown-method", _search(method="nosuch"), r"unknown method 'nosuch'"),
    Case("search-unknown-arch", lambda i, o: [*_search()(i, o), "--arch", "resnet99"], r"unknown arch 'resnet99'"),
    Case("search-unknown-proxy", lambda i, o: [*_search()(i, o), "--proxy", "mnist-9"], r"unknown dataset 'mnist-9'"),
    Case("pretrain-unknown-dataset", lambda i, o: [*_pretrain()(i, o), "--dataset", "mnist-9"], r"unknown dataset"),
    Case("finetune-unknown-dataset", _ft(dataset="mnist-9"), r"not mnist-9|unknown dataset"),
    Case("complexity-unknown-arch", lambda i, o: ["complexity", "--arch", "resnet99"], r"unknown arch"),
    Case("search-budget-w0a0", _search(budget="w0a0"), r"w0a0"),
    Case("search-budget-wxa3", _search(budget="wxa3"), r"wxa3"),
    Case("search-budget-w3x3", _search(budget="w3x3"), r"w3x3"),
    Case("search-budget-infeasible", _search("--w-candidates", "2,3,4", "--a-candidates", "2,3,4", budget="w1a1"),
         r"w1a1"),
    Case("complexity-policy-fractional", lambda i, o: ["complexity", "--arch", ARCH, "--policy", "w2.5a2.5"],
         r"w2\.5a2\.5"),
    Case("search-hp-unknown-key", _search("--hp", "learning_rate=0.1", method="edmips"), r"learning_rate.*known"),
    Case("search-hp-bad-value", _search("--hp", "epochs=lots", method="edmips"), r"epochs"),
    Case("search-hp-for-control", _search("--hp", "epochs=1"), r"epochs"),
    Case("search-hp-no-equals", _search("--hp", "epochs"), r"key=value"),
    Case("search-candidates-not-integers", _search("--w-candidates", "2,x"), r"comma-separated integers"),
    Case("search-candidates-out-of-range", _search("--a-candidates", "0,3"), r"1\.\.16"),
    Case("search-label-shell", _search("--label", "$(id)"), r"not a valid name"),
    Case("search-label-uppercase", _search("--label", "Edmips"), r"not a valid name"),
    Case("search-label-slash", _search("--label", "a/b"), r"not a valid name"),
    Case("search-proxy-label-shell", _search("--proxy-label", "`id`"), r"not a valid name"),
    Case("search-curve-bad", _search("--curve", "x y"), r"not a valid name"),
    Case("evaluate-suite-bad", _ev("--suite", "A;B"), r"not a valid name"),
    Case("search-precision-bad", _search("--precision", "fp16"), r"--precision.*invalid choice"),
    Case("finetune-precision-bad", _ft("--precision", "half"), r"--precision.*invalid choice"),
    Case("evaluate-precision-bad", _ev("--precision", "fp8"), r"--precision.*invalid choice"),
    Case("search-budget-floor-1.5", _search("--budget-floor", "1.5"), r"--budget-floor"),
    Case("search-length-0", _search("--length", "0"), r"--length"),
    Case("search-teacher-missing-flag", _search(method="gmpq"), r"--teacher"),
    Case("search-teacher-no-arch", lambda i, o: [*_search(method="gmpq")(i, o), "--teacher", i["fp_noarch"]],
         r"FP teacher .*no meta\.arch"),
    Case("search-teacher-missing-keys", lambda i, o: [*_search(method="gmpq")(i, o), "--teacher", i["fp_missing"]],
         r"FP teacher .*missing keys"),
    Case("search-teacher-file-missing", lambda i, o: [*_search(method="gmpq")(i, o), "--teacher", "nope.pt"],
         r"--teacher nope\.pt does not exist"),
    Case("search-teacher-file-missing-uniform", lambda i, o: [*_search()(i, o), "--teacher", "nope.pt"],
         r"--teacher nope\.pt does not exist"),
    Case("search-teacher-other-dataset", lambda i, o: [*_search(method="gmpq")(i, o), "--teacher", i["fp"]],
         r"--teacher .*fp\.pt was trained on 'fashion-mnist'; gmpq needs the FP model trained on the proxy 'digits'"),
    Case("search-target-fp-other-dataset", lambda i, o: [*_search(method="seam")(i, o), "--teacher", i["fp_digits"]],
         r"was trained on 'digits'; seam needs the FP model trained on the target 'fashion-mnist'"),
    Case("search-teacher-pickle-with-code", lambda i, o: [*_search(method="gmpq")(i, o), "--teacher", i["evil"]],
         r"evil\.pt cannot be read"),
    # -- files ---------------------------------------------------------------------------------------------------
    Case("finetune-policy-not-json", _ft(policy="bad"), r"not valid JSON"),
    Case("finetune-policy-wrong-schema", _ft(policy="schema"), r"malformed"),
    Case("finetune-policy-missing", _ft(policy="nope.json"), r"does not exist"),
    Case("finetune-policy-other-arch", _ft(policy="policy_r18"), r"resnet18"),
    Case("complexity-policy-not-json", lambda i, o: ["complexity", "--arch", ARCH, "--policy", i["bad"]],
         r"not valid JSON"),
    Case("aggregate-no-records", lambda i, o: ["aggregate", "--runs", i["empty"], "--out-dir", o / "res"],
         r"no run records"),
    Case("figures-no-records", lambda i, o: ["figures", "--runs", i["empty"], "--out-dir", o / "figs"],
         r"no run records"),
    Case("download-unknown-dataset", lambda i, o: ["download", "--dataset", "mnist-9", "--data-root", o / "root"],
         r"unknown dataset 'mnist-9'"),
    Case("finetune-missing-data", _ft("--data-root", "empty-root", dataset="cifar10", fp="fp_cifar"),
         r"CIFAR-10", late=True),
    # -- syntax ----------------------------------------------------------------------------------------------------
    Case("unknown-command", lambda i, o: ["frobnicate"], r"invalid choice"),
    Case("search-required-missing", lambda i, o: ["search", "--method", "uniform"], r"required"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, inp, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    if case.setup is not None:
        case.setup(work)
    monkeypatch.chdir(work)
    if not case.late:
        _forbid_work(monkeypatch)
    before, inputs_before = snapshot(work), snapshot(inp["dir"])
    argv = case.argv(inp, work)
    t0 = time.perf_counter()
    try:
        rc, out, err = run_cli(capsys, argv)
    except WorkStarted:
        pytest.fail(f"{case.id}: the command started loading data or training before it found the bad input")
    elapsed = time.perf_counter() - t0
    try:
        _check(case, rc, err, elapsed, work, before, inp, inputs_before)
    finally:
        for ro in work.rglob("ro"):
            ro.chmod(0o755)


def _check(case: Case, rc: int, err: str, elapsed: float, work: Path, before: dict, inp: dict,
           inputs_before: dict) -> None:
    assert rc == 2, f"exit status {rc}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"stderr must be exactly one line, got {err!r}"
    line = lines[0]
    assert line.startswith("error: ") and len(line) > len("error: ") + 10, line
    assert re.search(case.match, line), f"{line!r} does not match {case.match!r}"
    assert snapshot(work) == before, "a file was written or changed in the command's folder"
    assert snapshot(inp["dir"]) == inputs_before, "an input file was written or changed"
    assert not (inp["dir"] / "pwned").exists(), "a pickle ran code"
    if not case.late:
        assert elapsed < 15, f"{case.id} took {elapsed:.1f} s to fail"


def test_the_table_covers_every_command_and_enough_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 60
    for command in ("search", "pretrain", "finetune", "evaluate", "aggregate", "figures", "complexity", "info",
                    "download"):
        assert any(i.startswith(command + "-") for i in ids), command
