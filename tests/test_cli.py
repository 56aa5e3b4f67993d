"""The ``mpqbench`` command line: the error-behaviour contract and the fast happy paths.

Contract (architecture.md, Commands): every error a user can cause ends in one line ``error: <what is wrong;
what to do>`` on stderr, exit status 2, no traceback, and no partial output file. Most cases run in process
(``mpqbench.cli.main``), a few through ``python -m mpqbench`` to see the real stderr of a fresh process
(warnings included, which pytest would otherwise capture).

The end-to-end test runs pretrain → search (uniform, edmips) → finetune → evaluate → aggregate on tiny
settings and needs Fashion-MNIST (``apt-get install -y dataset-fashion-mnist``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from mpqbench.cli import main
from mpqbench.errors import UserError
from mpqbench.models import get_model
from mpqbench.utils import torch_save

REPO = Path(__file__).resolve().parents[1]
ARCH, WIDTH = "resnet20", 0.25
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_present() -> bool:
    from mpqbench.data import dataset_status

    return any(d["name"] == "fashion-mnist" and d["present"] for d in dataset_status())


needs_fashion = pytest.mark.skipif(
    not fashion_present(),
    reason=f"Fashion-MNIST not found ({FASHION_DIR} absent); install it with `apt-get install -y dataset-fashion-mnist`",
)


# ---------------------------------------------------------------------------------------------- helpers
def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in process → (exit status, stdout, stderr); argparse's SystemExit is an exit status."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MPLBACKEND": "Agg", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "mpqbench", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(rc: int, err: str, out_dir: Path, outputs: list[Path]) -> str:
    """Exit 2, exactly one stderr line ``error: ...``, no traceback, no output or temp file in ``out_dir``."""
    assert rc == 2, f"exit status {rc}, stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert len(lines[0]) > len("error: ") + 10, "the message must say what is wrong and what to do"
    for path in outputs:
        assert not path.exists(), f"partial output {path} left behind"
    leftovers = sorted(p.name for p in out_dir.rglob("*"))
    assert leftovers == [], f"files left in the output folder: {leftovers}"
    return lines[0]


# ---------------------------------------------------------------------------------------------- inputs
FP_META = {"arch": ARCH, "dataset": "digits", "num_classes": 10, "in_channels": 1, "input_size": 8, "width": WIDTH,
           "subset": None, "epochs": 1, "lr": 0.1, "batch_size": 64, "seed": 0, "top1": 10.0, "top5": 50.0,
           "loss": 2.3, "wall_s": 1.0, "macs_processed": 1, "init_weights": None}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Input files for the error cases: a valid FP checkpoint and policies, and broken files."""
    d = tmp_path_factory.mktemp("inputs")
    model = get_model(ARCH, num_classes=10, in_channels=1, input_size=8, width=WIDTH)
    torch_save({"state_dict": model.state_dict(), "meta": FP_META}, d / "fp.pt")
    # An FP model "trained on" CIFAR-10 (whose files are absent under --data-root) and its quantized version.
    cifar = get_model(ARCH, num_classes=10, in_channels=3, input_size=32, width=WIDTH)
    cifar_meta = dict(FP_META, dataset="cifar10", in_channels=3, input_size=32)
    torch_save({"state_dict": cifar.state_dict(), "meta": cifar_meta}, d / "fp_cifar10.pt")
    (d / "garbage.pt").write_bytes(bytes(range(256)) * 8)
    torch.save({"weights": torch.zeros(3)}, d / "not_mpqbench.pt")
    (d / "bad.json").write_text('{"arch": "resnet20", "layers": {')
    (d / "empty").mkdir()

    # Real policies from the uniform control (no network is trained): resnet20 and resnet18 on digits.
    for arch, name in ((ARCH, "policy.json"), ("resnet18", "policy_resnet18.json")):
        rc = main(["search", "--device", "cpu", "--no-progress", "--method", "uniform", "--arch", arch,
                   "--width", str(WIDTH), "--proxy", "digits", "--target", "digits", "--budget", "w3a3",
                   "--seed", "0", "--out", str(d / name)])
        assert rc == 0 and (d / name).is_file()
    policy = json.loads((d / "policy.json").read_text())
    wrong_schema = dict(policy, layers={n: {"w": "three", "a": 3} for n in policy["layers"]})
    (d / "schema.json").write_text(json.dumps(wrong_schema))
    # Claims to be a resnet20 policy but names resnet18's layers.
    other = json.loads((d / "policy_resnet18.json").read_text())
    (d / "renamed.json").write_text(json.dumps(dict(other, arch=ARCH)))
    from mpqbench.pipeline import quantized_model
    from mpqbench.policy import Policy

    q = quantized_model(Policy.load(d / "policy.json"), cifar_meta, cifar.state_dict())
    torch_save({"state_dict": q.state_dict(), "meta": {"epochs": 1, "wall_s": 1.0, "macs_processed": 1, "lr": 0.01,
                                                       "batch_size": 64, "subset": None, "seed": 0,
                                                       "weight_decay": 1e-4}}, d / "q_cifar10.pt")
    return {p.stem if p.suffix else p.name: p for p in d.iterdir()} | {"dir": d}


SEARCH = ["search", "--device", "cpu", "--no-progress", "--arch", ARCH, "--width", str(WIDTH), "--proxy", "digits",
          "--target", "digits", "--seed", "0"]
PRETRAIN = ["pretrain", "--device", "cpu", "--no-progress", "--epochs", "1", "--batch-size", "64", "--subset", "64"]
FINETUNE = ["finetune", "--device", "cpu", "--no-progress", "--dataset", "digits", "--epochs", "1", "--batch-size", "64"]
EVALUATE = ["evaluate", "--device", "cpu", "--no-progress", "--dataset", "digits", "--suite", "test"]

# id → (argv builder (inputs, out_dir) -> argv, output files, regex the message must match)
Case = tuple[Callable[[dict, Path], list], Callable[[Path], list[Path]], str]
CASES: dict[str, Case] = {
    # unknown names
    "search-unknown-arch": (lambda i, o: [*SEARCH[:4], "--arch", "resnet99", "--proxy", "digits", "--target", "digits",
                                           "--method", "uniform", "--budget", "w3a3", "--out", o / "p.json"],
                            lambda o: [o / "p.json"], r"unknown arch 'resnet99'.*resnet20"),
    "pretrain-unknown-arch": (lambda i, o: [*PRETRAIN, "--arch", "resnet99", "--dataset", "digits", "--out", o / "fp.pt"],
                              lambda o: [o / "fp.pt", o / "fp.pt.json"], r"unknown arch"),
    "complexity-unknown-arch": (lambda i, o: ["complexity", "--arch", "resnet99", "--policy", "w4a4"],
                                lambda o: [], r"unknown arch"),
    "search-unknown-method": (lambda i, o: [*SEARCH, "--method", "nosuch", "--budget", "w3a3", "--out", o / "p.json"],
                              lambda o: [o / "p.json"], r"unknown method 'nosuch'.*edmips"),
    "pretrain-unknown-dataset": (lambda i, o: [*PRETRAIN, "--arch", ARCH, "--dataset", "mnist-9", "--out", o / "fp.pt"],
                                 lambda o: [o / "fp.pt", o / "fp.pt.json"], r"unknown dataset 'mnist-9'.*digits"),
    "search-unknown-proxy": (lambda i, o: [*SEARCH[:8], "--proxy", "mnist-9", "--target", "digits", "--method", "uniform",
                                           "--budget", "w3a3", "--out", o / "p.json"],
                             lambda o: [o / "p.json"], r"unknown dataset"),
    "search-unknown-target": (lambda i, o: [*SEARCH[:8], "--proxy", "digits", "--target", "mnist-9", "--method", "uniform",
                                            "--budget", "w3a3", "--out", o / "p.json"],
                              lambda o: [o / "p.json"], r"unknown dataset"),
    # budgets
    "search-malformed-budget": (lambda i, o: [*SEARCH, "--method", "uniform", "--budget", "w3x3", "--out", o / "p.json"],
                                lambda o: [o / "p.json"], r"w3x3"),
    "complexity-malformed-policy-name": (lambda i, o: ["complexity", "--arch", ARCH, "--policy", "w3x3"],
                                         lambda o: [], r"w3x3"),
    "complexity-fractional-policy-name": (lambda i, o: ["complexity", "--arch", ARCH, "--policy", "w2.5a2.5"],
                                          lambda o: [], r"w2\.5a2\.5"),
    "search-infeasible-budget-uniform": (lambda i, o: [*SEARCH, "--method", "uniform", "--budget", "w1a1",
                                                       "--w-candidates", "2,3,4", "--a-candidates", "2,3,4", "--out", o / "p.json"],
                                         lambda o: [o / "p.json"], r"w1a1"),
    "search-infeasible-budget-random": (lambda i, o: [*SEARCH, "--method", "random", "--budget", "w1a1", "--hp", "max_draws=20000",
                                                      "--out", o / "p.json"],
                                        lambda o: [o / "p.json"], r"budget"),
    # policies
    "finetune-policy-not-json": (lambda i, o: [*FINETUNE, "--policy", i["bad"], "--fp", i["fp"], "--out", o / "q.pt"],
                                 lambda o: [o / "q.pt"], r"not valid JSON"),
    "finetune-policy-wrong-schema": (lambda i, o: [*FINETUNE, "--policy", i["schema"], "--fp", i["fp"], "--out", o / "q.pt"],
                                     lambda o: [o / "q.pt"], r"malformed"),
    "finetune-policy-missing": (lambda i, o: [*FINETUNE, "--policy", i["dir"] / "nope.json", "--fp", i["fp"], "--out", o / "q.pt"],
                                lambda o: [o / "q.pt"], r"does not exist"),
    "evaluate-policy-not-json": (lambda i, o: [*EVALUATE, "--ckpt", i["fp"], "--policy", i["bad"], "--fp", i["fp"],
                                               "--out", o / "r.json"],
                                 lambda o: [o / "r.json"], r"not valid JSON"),
    "complexity-policy-not-json": (lambda i, o: ["complexity", "--arch", ARCH, "--policy", i["bad"]],
                                   lambda o: [], r"not valid JSON"),
    "finetune-policy-other-arch": (lambda i, o: [*FINETUNE, "--policy", i["policy_resnet18"], "--fp", i["fp"], "--out", o / "q.pt"],
                                   lambda o: [o / "q.pt"], r"resnet18"),
    "finetune-policy-other-arch-layers": (lambda i, o: [*FINETUNE, "--policy", i["renamed"], "--fp", i["fp"], "--out", o / "q.pt"],
                                          lambda o: [o / "q.pt"], r"layer"),
    "evaluate-policy-other-arch": (lambda i, o: [*EVALUATE, "--ckpt", i["fp"], "--policy", i["policy_resnet18"], "--fp", i["fp"],
                                                 "--out", o / "r.json"],
                                   lambda o: [o / "r.json"], r"resnet18"),
    "complexity-policy-other-arch": (lambda i, o: ["complexity", "--arch", ARCH, "--width", str(WIDTH), "--input-size", "8",
                                                   "--num-classes", "10", "--in-channels", "1", "--policy", i["policy_resnet18"]],
                                     lambda o: [], r"layer"),
    # checkpoints
    "finetune-fp-missing": (lambda i, o: [*FINETUNE, "--policy", i["policy"], "--fp", i["dir"] / "nope.pt", "--out", o / "q.pt"],
                            lambda o: [o / "q.pt"], r"nope\.pt"),
    "finetune-fp-garbage": (lambda i, o: [*FINETUNE, "--policy", i["policy"], "--fp", i["garbage"], "--out", o / "q.pt"],
                            lambda o: [o / "q.pt"], r"garbage\.pt"),
    "finetune-fp-not-mpqbench": (lambda i, o: [*FINETUNE, "--policy", i["policy"], "--fp", i["not_mpqbench"], "--out", o / "q.pt"],
                                 lambda o: [o / "q.pt"], r"not_mpqbench\.pt"),
    "evaluate-ckpt-garbage": (lambda i, o: [*EVALUATE, "--ckpt", i["garbage"], "--policy", i["policy"], "--fp", i["fp"],
                                            "--out", o / "r.json"],
                              lambda o: [o / "r.json"], r"garbage\.pt"),
    "evaluate-ckpt-missing": (lambda i, o: [*EVALUATE, "--ckpt", i["dir"] / "nope.pt", "--policy", i["policy"], "--fp", i["fp"],
                                            "--out", o / "r.json"],
                              lambda o: [o / "r.json"], r"nope\.pt"),
    "evaluate-ckpt-not-for-policy": (lambda i, o: [*EVALUATE, "--ckpt", i["fp"], "--policy", i["policy"], "--fp", i["fp"],
                                                   "--out", o / "r.json"],
                                     lambda o: [o / "r.json"], r"policy"),
    "search-teacher-garbage": (lambda i, o: [*SEARCH, "--method", "gmpq", "--budget", "w3a3", "--teacher", i["garbage"],
                                             "--hp", "epochs=0.01", "--out", o / "p.json"],
                               lambda o: [o / "p.json"], r"garbage\.pt"),
    "search-teacher-missing-flag": (lambda i, o: [*SEARCH, "--method", "gmpq", "--budget", "w3a3", "--out", o / "p.json"],
                                    lambda o: [o / "p.json"], r"--teacher"),
    # hyper-parameters
    "search-hp-unknown-key": (lambda i, o: [*SEARCH, "--method", "edmips", "--budget", "w3a3", "--hp", "learning_rate=0.1",
                                            "--out", o / "p.json"],
                              lambda o: [o / "p.json"], r"learning_rate.*known: .*epochs"),
    "search-hp-bad-value": (lambda i, o: [*SEARCH, "--method", "edmips", "--budget", "w3a3", "--hp", "epochs=lots",
                                          "--out", o / "p.json"],
                            lambda o: [o / "p.json"], r"epochs"),
    "search-hp-for-control": (lambda i, o: [*SEARCH, "--method", "uniform", "--budget", "w3a3", "--hp", "epochs=1",
                                            "--out", o / "p.json"],
                              lambda o: [o / "p.json"], r"epochs"),
    # missing data
    "pretrain-missing-data": (lambda i, o: [*PRETRAIN, "--arch", ARCH, "--dataset", "cifar10", "--data-root", i["empty"],
                                            "--out", o / "fp.pt"],
                              lambda o: [o / "fp.pt", o / "fp.pt.json"], r"CIFAR-10.*(download|get it)"),
    "search-missing-proxy-data": (lambda i, o: [*SEARCH[:8], "--proxy", "cifar10", "--target", "digits", "--method", "uniform",
                                                "--budget", "w3a3", "--data-root", i["empty"], "--out", o / "p.json"],
                                  lambda o: [o / "p.json"], r"CIFAR-10"),
    "finetune-missing-data": (lambda i, o: [*FINETUNE[:4], "--dataset", "cifar10", "--data-root", i["empty"], "--policy", i["policy"],
                                            "--fp", i["fp_cifar10"], "--out", o / "q.pt"],
                              lambda o: [o / "q.pt"], r"CIFAR-10"),
    "evaluate-missing-data": (lambda i, o: [*EVALUATE[:4], "--dataset", "cifar10", "--data-root", i["empty"], "--policy", i["policy"],
                                            "--fp", i["fp_cifar10"], "--ckpt", i["q_cifar10"], "--out", o / "r.json"],
                              lambda o: [o / "r.json"], r"CIFAR-10"),
    "download-unknown-dataset": (lambda i, o: ["download", "--dataset", "mnist-9", "--data-root", o / "root"],
                                 lambda o: [o / "root"], r"unknown dataset 'mnist-9'"),
    "aggregate-no-records": (lambda i, o: ["aggregate", "--runs", i["empty"], "--out-dir", o / "results"],
                             lambda o: [o / "results"], r"no run records"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_contract(case, inputs, tmp_path, capsys):
    build, outputs, pattern = CASES[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = sorted(p.name for p in inputs["dir"].iterdir())
    rc, _, err = run_cli(capsys, build(inputs, out_dir))
    line = assert_user_error(rc, err, out_dir, outputs(out_dir))
    assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"
    assert sorted(p.name for p in inputs["dir"].iterdir()) == before, "an input folder gained files"


def test_finetune_error_leaves_existing_output_untouched(inputs, tmp_path, capsys):
    # A failed command must not replace (or truncate) an output from an earlier successful run.
    out = tmp_path / "q.pt"
    out.write_bytes(b"earlier result")
    rc, _, err = run_cli(capsys, [*FINETUNE, "--policy", inputs["bad"], "--fp", inputs["fp"], "--out", out])
    assert rc == 2 and err.startswith("error: ")
    assert out.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pt"]


def test_argparse_errors_exit_2_without_traceback(capsys):
    # Syntax errors are argparse's: exit 2, no traceback, the message on the last stderr line.
    for argv in (["search", "--method", "uniform"],  # required options missing
                 [*SEARCH, "--method", "uniform", "--budget", "w3a3", "--w-candidates", "2,x", "--out", "x.json"],
                 ["frobnicate"]):
        rc, _, err = run_cli(capsys, argv)
        assert rc == 2, argv
        assert "Traceback" not in err
        assert "error:" in err.strip().splitlines()[-1], err


# ---------------------------------------------------------------------------------------------- via subprocess
def test_subprocess_unknown_arch(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_subprocess([*SEARCH[:4], "--arch", "resnet99", "--proxy", "digits", "--target", "digits",
                           "--method", "uniform", "--budget", "w3a3", "--out", out_dir / "p.json"], cwd=tmp_path)
    line = assert_user_error(proc.returncode, proc.stderr, out_dir, [out_dir / "p.json"])
    assert "resnet99" in line
    assert proc.stdout == ""


def test_subprocess_garbage_checkpoint(inputs, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_subprocess([*FINETUNE, "--policy", inputs["policy"], "--fp", inputs["garbage"], "--out", out_dir / "q.pt"],
                          cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, out_dir, [out_dir / "q.pt"])


def test_subprocess_infeasible_budget_in_a_real_search(tmp_path):
    # A network search whose budget the candidates cannot meet: still exactly one line, nothing written,
    # and nothing else on stderr (no warnings from the search loop).
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_subprocess([*SEARCH, "--method", "edmips", "--budget", "w1a1", "--proxy-subset", "64",
                           "--hp", "epochs=0.01", "--hp", "batch_size=32", "--out", out_dir / "p.json"], cwd=tmp_path)
    line = assert_user_error(proc.returncode, proc.stderr, out_dir, [out_dir / "p.json"])
    assert "budget" in line


# ---------------------------------------------------------------------------------------------- happy paths
def test_info_json_lists_archs_methods_datasets(capsys):
    rc, out, err = run_cli(capsys, ["info", "--json", "--device", "cpu"])
    assert rc == 0, err
    info = json.loads(out)
    assert {"resnet20", "resnet18", "resnet50", "mobilenet_v2"} <= set(info["archs"])
    assert {"asga", "gmpq-asga", "edmips", "edmips-target", "gmpq", "uniform", "random"} <= set(info["methods"])
    names = {d["name"]: d for d in info["datasets"]}
    assert {"digits", "fashion-mnist", "cifar10", "imagenet"} <= set(names)
    assert names["digits"]["present"] is True
    for d in info["datasets"]:
        assert set(d) >= {"name", "present", "where", "how_to_get"}
        assert d["how_to_get"]
        assert (d["where"] is not None) == d["present"]
    assert info["torch"] == torch.__version__
    assert info["device"].startswith("cpu")


@pytest.mark.parametrize("command, options", [
    ("search", {"--method": "method", "--arch": "arch", "--proxy": "dataset", "--target": "dataset"}),
    ("pretrain", {"--arch": "arch", "--dataset": "dataset"}),
    ("complexity", {"--arch": "arch"}),
    ("download", {"--dataset": "dataset"}),
    ("finetune", {"--dataset": "dataset"}),
    ("evaluate", {"--dataset": "dataset"}),
])
def test_help_lists_the_registered_values(command, options, capsys):
    from mpqbench.data.registry import DATASETS
    from mpqbench.models import list_models
    from mpqbench.plugins import discover

    registered = {"method": discover(), "arch": list_models(), "dataset": DATASETS.names()}
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    entries: dict[str, str] = {}  # option -> its help entry, argparse's line wrapping undone
    for line in capsys.readouterr().out.split("options:", 1)[1].splitlines():
        start = re.match(r"  (?:-\w, )?(--[\w-]+)", line)
        if start:
            current = start.group(1)
            entries[current] = line
        elif line.startswith("   ") and entries:
            entries[current] += " " + line.strip()
    for option, kind in options.items():
        entry = re.sub(r"-\s+", "-", " ".join(entries[option].split()))  # a break after "gmpq-"
        assert "one of: " in entry, (option, entry)
        names = [n.strip() for n in entry.split("one of: ", 1)[1].split(",")]
        assert names == registered[kind], (option, names)
    # a second help of the same parser does not repeat the list
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert capsys.readouterr().out.count("one of:") == len(options)


def test_info_text_mentions_missing_dataset_command_for_the_given_root(tmp_path, capsys):
    root = tmp_path / "data-root"
    rc, out, _ = run_cli(capsys, ["info", "--device", "cpu", "--data-root", root])
    assert rc == 0
    assert "resnet20" in out and "edmips" in out
    cifar = next(line for line in out.splitlines() if line.strip().startswith("cifar10"))
    assert "missing" in cifar and re.search(r"`[^`]+`", cifar), "a missing dataset names the command that gets it"
    assert str(root) in cifar, "info must report datasets under --data-root, not the default root"


def test_info_json_subprocess(tmp_path):
    proc = run_subprocess(["info", "--json", "--device", "cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert "asga" in info["methods"] and "resnet20" in info["archs"]


def test_complexity_json_resnet18_w4a4(capsys):
    rc, out, err = run_cli(capsys, ["complexity", "--arch", "resnet18", "--input-size", "224", "--num-classes", "1000",
                                    "--policy", "w4a4", "--json"])
    assert rc == 0, err
    rep = json.loads(out)
    t = rep["totals"]
    assert round(t["macs_g_all"], 2) == 1.81  # torchvision ResNet-18 at 224 px: 1.814 GMACs
    assert t["macs_g_all"] == pytest.approx(1.814073344, abs=1e-9)
    # Searchable BitOPs at W4A4 = searchable MACs × 4 × 4, exactly (×16 is exact in binary floating point).
    assert t["bitops_g_searchable"] == t["macs_g_searchable"] * 16
    layers = {r["name"]: r for r in rep["layers"]}
    assert layers["conv1"]["macs"] == 3 * 64 * 7 * 7 * 112 * 112 and not layers["conv1"]["searchable"]
    assert layers["fc"]["macs"] == 512 * 1000 and not layers["fc"]["searchable"]
    assert (layers["conv1"]["w"], layers["conv1"]["a"]) == (8, 8)
    assert layers["layer1.0.conv1"]["macs"] == 64 * 64 * 9 * 56 * 56
    assert all((r["w"], r["a"]) == (4, 4) for r in rep["layers"] if r["searchable"])
    assert sum(r["searchable"] for r in rep["layers"]) == 19  # 16 3×3 convs + 3 downsample 1×1 convs
    # all layers = searchable at 4×4 + stem and classifier at 8×8
    fixed_macs = layers["conv1"]["macs"] + layers["fc"]["macs"]
    assert t["bitops_g_all"] == pytest.approx(t["bitops_g_searchable"] + fixed_macs * 64 / 1e9, rel=1e-12)
    assert t["macs_g_all"] * 1e9 == pytest.approx(sum(r["macs"] for r in rep["layers"]), rel=1e-12)
    assert t["avg_w_bits"] == 4.0 and t["avg_a_bits"] == 4.0
    # size: searchable weights at 4 bits, stem/fc weights at 8, biases and BN at 32
    assert 5.5 < t["size_mb"] < 6.5


def test_complexity_text_prints_table(capsys):
    rc, out, err = run_cli(capsys, ["complexity", "--arch", "resnet18", "--input-size", "224", "--num-classes", "1000",
                                    "--policy", "w4a4"])
    assert rc == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["layer", "type", "MACs"])
    rows = [line for line in lines[header + 1:] if re.match(r"^(conv1|fc|layer\d)", line)]
    assert len(rows) == 21
    assert any(r.startswith("conv1 (fixed)") for r in rows) and any(r.startswith("fc (fixed)") for r in rows)
    l10 = next(r for r in rows if r.startswith("layer1.0.conv1 "))
    assert str(64 * 64 * 9 * 56 * 56) in l10.split()
    assert re.search(r"MACs: 1\.8141 G all", out)
    assert "BitOPs:" in out and "searchable only" in out


def test_complexity_of_policy_file_matches_its_achieved_cost(inputs, capsys):
    policy = json.loads(inputs["policy"].read_text())
    rc, out, err = run_cli(capsys, ["complexity", "--arch", ARCH, "--width", str(WIDTH), "--input-size", "8",
                                    "--num-classes", "10", "--in-channels", "1", "--policy", inputs["policy"], "--json"])
    assert rc == 0, err
    t = json.loads(out)["totals"]
    for key in ("bitops_g_all", "bitops_g_searchable", "size_mb", "avg_w_bits", "avg_a_bits"):
        assert t[key] == pytest.approx(policy["achieved"][key], rel=1e-12), key


# ---------------------------------------------------------------------------------------------- end to end
@needs_fashion
@pytest.mark.slow
def test_end_to_end_pretrain_search_finetune_evaluate_aggregate(tmp_path, capsys):
    from mpqbench.board import read_leaderboard_csv
    from mpqbench.records import RunRecord
    from mpqbench.runs import Layout

    common = ["--device", "cpu", "--no-progress"]
    size = ["--width", str(WIDTH)]
    fp = tmp_path / "fp_fashion.pt"
    rc, _, err = run_cli(capsys, ["pretrain", *common, "--arch", ARCH, *size, "--dataset", "fashion-mnist",
                                  "--input-size", "16", "--subset", "512", "--epochs", "1", "--lr", "0.05",
                                  "--batch-size", "64", "--seed", "0", "--out", fp])
    assert rc == 0, err
    meta = json.loads((tmp_path / "fp_fashion.pt.json").read_text())
    assert meta["arch"] == ARCH and meta["input_size"] == 16 and meta["dataset"] == "fashion-mnist"
    assert 0 <= meta["top1"] <= 100
    assert not (tmp_path / "fp_fashion.pt.resume").exists()

    runs = tmp_path / "results" / "runs"
    records = {}
    for method, hp in (("uniform", []), ("edmips", ["--hp", "epochs=0.2", "--hp", "batch_size=64"])):
        policy = tmp_path / f"policy_{method}.json"
        rc, _, err = run_cli(capsys, ["search", *common, "--method", method, "--arch", ARCH, *size, "--proxy", "digits",
                                      "--proxy-subset", "200", "--proxy-input-size", "16", "--target", "fashion-mnist",
                                      "--target-input-size", "16", "--budget", "w3a3", "--seed", "0", *hp, "--out", policy])
        assert rc == 0, err
        p = json.loads(policy.read_text())
        assert p["achieved"]["bitops_g_searchable"] <= p["budget"]["bitops_g"] * (1 + 1e-9)
        assert p["search"]["proxy"] == "digits-subset"

        q = tmp_path / f"q_{method}.pt"
        rc, _, err = run_cli(capsys, ["finetune", *common, "--policy", policy, "--fp", fp, "--dataset", "fashion-mnist",
                                      "--subset", "512", "--epochs", "1", "--lr", "0.01", "--batch-size", "64",
                                      "--seed", "0", "--out", q])
        assert rc == 0, err
        assert q.is_file()

        out = tmp_path / Layout(suite="smoke", target="fashion-mnist", results_dir="results").path(
            "record", arch=ARCH, budget="w3a3", method=method, proxy="digits-subset", seed=0)
        rc, stdout, err = run_cli(capsys, ["evaluate", *common, "--ckpt", q, "--policy", policy, "--fp", fp,
                                           "--dataset", "fashion-mnist", "--suite", "smoke", "--out", out])
        assert rc == 0, err
        assert "top-1" in stdout
        rec = RunRecord.model_validate(json.loads(out.read_text()))
        records[method] = rec
        assert rec.status == "ok" and rec.reason is None
        assert rec.method == method and rec.base_method == method and rec.suite == "smoke"
        assert rec.arch == ARCH and rec.proxy == "digits-subset" and rec.target == "fashion-mnist" and rec.seed == 0
        assert 0 <= rec.metrics.top1 <= 100 and 0 <= rec.metrics.top5 <= 100
        assert rec.metrics.top5 >= rec.metrics.top1
        assert rec.fp_top1 == meta["top1"]
        assert rec.finetune.epochs == 1 and rec.finetune.wall_s > 0 and rec.finetune.macs_processed > 0
        assert re.fullmatch(r"[0-9a-f]{12}", rec.run_id)
        assert rec.budget.name == "w3a3"
        assert rec.achieved.bitops_g_searchable <= rec.budget.bitops_g * (1 + 1e-9)
        assert {n: (b.w, b.a) for n, b in rec.layers.items()} == {n: (v["w"], v["a"]) for n, v in p["layers"].items()}

    assert all((b.w, b.a) == (3, 3) for b in records["uniform"].layers.values())
    assert records["uniform"].search.macs_processed == 0
    assert records["edmips"].search.macs_processed > 0 and records["edmips"].search.steps >= 1
    assert records["edmips"].search.hparams["epochs"] == 0.2
    assert records["uniform"].run_id != records["edmips"].run_id

    results = tmp_path / "results"
    rc, _, err = run_cli(capsys, ["aggregate", "--runs", runs, "--out-dir", results])
    assert rc == 0, err
    csv = results / "leaderboard.csv"
    board = read_leaderboard_csv(csv)
    assert len(board) == 2
    assert sorted(board["method"]) == ["edmips", "uniform"]
    assert set(board["target"]) == {"fashion-mnist"} and set(board["budget"]) == {"w3a3"}
    for method, rec in records.items():
        row = board[board["method"] == method].iloc[0]
        assert row["top1_pct"] == pytest.approx(rec.metrics.top1)
    summary = json.loads((results / "summary.json").read_text())
    assert summary
    assert list((results / "figures").glob("*.png")), "aggregate wrote no figures"

    # The leaderboard regenerates byte-identically.
    first = csv.read_bytes()
    rc, _, err = run_cli(capsys, ["aggregate", "--runs", runs, "--out-dir", results, "--no-figures"])
    assert rc == 0, err
    assert csv.read_bytes() == first
    assert not [p for p in results.rglob("*.tmp")], "temp files left by aggregate"

    # The workflow's figures stage on its own: the same figure files as aggregate draws.
    rc, out, err = run_cli(capsys, ["figures", "--runs", runs, "--out-dir", tmp_path / "figs"])
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "figs").glob("*.png")) == sorted(
        p.name for p in (results / "figures").glob("*.png"))
    rc, _, err = run_cli(capsys, ["figures", "--runs", tmp_path / "nothing", "--out-dir", tmp_path / "f2"])
    assert rc == 2 and "no run records" in err and not (tmp_path / "f2").exists()


@pytest.mark.parametrize("flag", ["--label", "--proxy-label"])
@pytest.mark.parametrize("value", ["$(touch /tmp/mpqbench-pwned)", "`id`", "a;b", "A", "x y", "'q'", "-x"])
def test_labels_that_are_not_names_are_refused_before_any_work(flag, value, tmp_path, capsys):
    # labels become path parts and words of the reproduce commands the leaderboard prints: only names pass
    out = tmp_path / "p.json"
    rc, _, err = run_cli(capsys, ["search", "--method", "uniform", "--arch", ARCH, "--proxy", "digits",
                                  "--target", "fashion-mnist", "--budget", "w3a3", "--device", "cpu",
                                  f"{flag}={value}", "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_run_search_refuses_a_bad_label_from_the_library(tmp_path):
    from mpqbench.search.run import SearchRequest, run_search

    req = SearchRequest(method="uniform", arch=ARCH, proxy="digits", target="fashion-mnist", budget="w3a3", seed=0,
                        label="$(id)", device="cpu")
    with pytest.raises(UserError, match="not a valid name"):
        run_search(req, tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()
