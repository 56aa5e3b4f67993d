"""scripts/arch_comparison.py: Kendall's tau by hand, verdicts, and its output on a two-network summary."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("arch_comparison", ROOT / "scripts" / "arch_comparison.py")
ac = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ac)


def test_kendall_tau_by_hand():
    assert ac.kendall_tau(["a", "b", "c"], ["a", "b", "c"]) == 1
    assert ac.kendall_tau(["a", "b", "c"], ["c", "b", "a"]) == -1
    # pairs (a,b) concordant, (a,c) concordant, (b,c) discordant: (2 - 1) / 3
    assert ac.kendall_tau(["a", "b", "c"], ["a", "c", "b"]) == pytest.approx(1 / 3)


def _entry(top1, rank, diff=None, ci=None, tied=None):
    return {"top1_mean": top1, "top1_ci": 0.5, "rank": rank, "paired_diff_pp": diff, "paired_diff_ci": ci,
            "tied_with_best": tied, "search_length": 1.0}


def _group(bitops, entries, gain=None):
    return {"budget_bitops_g": bitops, "entries": entries, "gain_at_equal_accuracy": gain or {}}


def test_two_networks_side_by_side(tmp_path, capsys):
    gain = {"asga@d": {"reference": "ref@t", "proposed_top1_mean": 80.0, "proposed_top1_ci": 1.0,
                       "fixed_length_gain": {"macs": 1.5},
                       "macs": {"value": 1.5, "bound": ">", "ci_low": 0.3, "ci_high": None}}}
    a = {"x@d": _entry(85.0, 1, 0.0, 0.0, True), "asga@d": _entry(84.0, 2, -1.0, 0.5, False),
         "y@d": _entry(83.0, 3, -2.0, 3.0, True)}
    b = {"x@d": _entry(70.0, 2, -0.5, 1.0, True), "asga@d": _entry(71.0, 1, 0.0, 0.0, True),
         "y@d": _entry(60.0, 3, -11.0, 2.0, False)}
    summary = {"groups": {"s": {
        "net_a": {"t": {"lo": _group(0.1, a, gain), "hi": _group(0.2, a)}},
        "net_b": {"t": {"lo2": _group(0.01, b), "hi2": _group(0.02, b)}}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert ac.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## lower budget: net_a at lo; net_b at lo2" in out
    # orders a: x, asga, y; b: asga, x, y -> one discordant pair of three
    assert "Kendall's tau of the mean top-1 orders (3 entries): +0.33" in out
    # asga: below on net_a, best on net_b; y: tied on net_a, below on net_b
    assert "tied with or the best on the other): asga@d, y@d." in out
    assert "| net_a | lo | asga@d | ref@t | 80.00 ± 1.00 | > +150% [+30%, +∞] | +150% |" in out


def test_missing_summary_is_a_one_line_error(tmp_path, capsys):
    assert ac.main([str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"schema_version": 1}'])
def test_malformed_summary_is_a_one_line_error(tmp_path, capsys, text):
    (tmp_path / "summary.json").write_text(text)
    assert ac.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a summary.json" in err
