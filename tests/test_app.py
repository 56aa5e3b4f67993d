"""app/leaderboard.py through streamlit.testing.v1.AppTest (headless, no browser).

Hand-computed values come from tests/fixtures/results_small (see test_leaderboard.py's docstring).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("altair")
from streamlit.testing.v1 import AppTest  # noqa: E402

from mpqbench import board as lb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app" / "leaderboard.py")
FIXTURES = Path(__file__).parent / "fixtures"
PUBLISHED = "Published numbers (not comparable)"


def run_app(monkeypatch, results: Path | None, *, query: dict | None = None,
            published: Path | None = None) -> AppTest:
    if results is None:
        monkeypatch.delenv(lb.RESULTS_ENV, raising=False)
    else:
        monkeypatch.setenv(lb.RESULTS_ENV, str(results))
    if published is None:
        monkeypatch.delenv("MPQBENCH_PUBLISHED", raising=False)
    else:
        monkeypatch.setenv("MPQBENCH_PUBLISHED", str(published))
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def board(at: AppTest) -> pd.DataFrame:
    df = at.dataframe[0].value
    assert "Rank" in df.columns
    return df


def entries(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(df["Method"], df["Proxy (search data)"]))


def qp(at: AppTest, key: str) -> list[str]:
    value = at.query_params[key]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def open_section(at: AppTest, name: str) -> AppTest:
    """Open one of the lazy sections below the ranking (as a click on its tab does)."""
    at.session_state["section"] = name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, tuple[str, str]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


@pytest.fixture
def small(monkeypatch) -> AppTest:
    return run_app(monkeypatch, FIXTURES / "results_small")


def test_default_view_ranks_by_hand(small):
    # defaults = the options with the most runs: resnet20, w3a3
    assert small.sidebar.selectbox(key="arch").value == "resnet20"
    assert small.sidebar.selectbox(key="budget").value == "w3a3"
    df = board(small)
    assert entries(df) == [("edmips-target", "fashion-mnist"), ("asga", "fmnist-subset"), ("asga", "digits"),
                           ("asga-sam", "digits"), ("gmpq-asga", "digits"), ("gmpq", "digits"), ("edmips", "digits"),
                           ("hawq", "digits"), ("uniform", "digits"), ("random", "digits")]
    assert df["Rank"].tolist() == list(range(1, 11))
    assert df["Top-1 (%)"].tolist() == pytest.approx([89.5, 89.3, 89.0, 88.5, 87.5, 87.25, 86.5, 85.0, 84.0, 81.0])
    assert df.loc[2, "Search cost (TMAC)"] == pytest.approx(2.0)
    assert df.loc[2, "Reproduce (snakemake)"].count("results/runs/default/resnet20/w3a3/asga/digits-to-") == 3
    assert df.loc[2, "Reproduce search (mpqbench)"].startswith("for s in 0 1 2; do mpqbench search --method asga")
    # every numeric column header carries a unit
    for col in df.columns:
        if pd.api.types.is_float_dtype(df[col]) and col != "Rank":
            assert "(" in col, col
    assert small.get("vega_lite_chart") == []  # the first view: headline, ranking, policy picker; no chart
    open_section(small, "Accuracy vs BitOPs and search cost")
    assert len(small.get("vega_lite_chart")) == 2  # accuracy-vs-BitOPs and accuracy-vs-cost


def test_headline_gains_by_hand(small):
    m = metrics(small)
    assert m["Best at w3a3 (searched on fashion-mnist)"][0] == "edmips-target"
    assert m["Its top-1 (%)"][0] == "89.50 ± 0.00"
    # ASGA searched on digits (its best-ranked proxy is fmnist-subset; pick digits explicitly)
    small.radio(key="asga_proxy").set_value("digits").run()
    m = metrics(small)
    assert m["vs gmpq @ digits"] == ("+100%", "+1.75 pp top-1")
    assert m["vs edmips-target @ fashion-mnist"] == ("+150%", "-0.50 pp top-1")
    assert m["vs edmips @ digits"] == ("-50%", "+2.50 pp top-1")
    assert "vs gmpq-asga @ digits" not in m  # the other proposed method is not a baseline


def test_cost_measure_switches_to_wall_seconds(small):
    small.radio(key="asga_proxy").set_value("digits").run()
    small.sidebar.radio(key="cost").set_value("wall_s").run()
    m = metrics(small)
    # random does not search (0 MACs): its 0.1 s of wall time would read "-100%" (0.1 s / 100 s - 1), a gain
    # without meaning; it is shown as no search in every cost measure
    assert m["vs random @ digits"][0] == "n/a (no search)"
    assert m["vs edmips @ digits"][0] == "-50%"
    assert qp(small, "cost") == ["wall_s"]


def test_gains_against_zero_cost_controls_say_no_search(small):
    small.radio(key="asga_proxy").set_value("digits").run()
    m = metrics(small)
    assert m["vs uniform @ digits"] == ("n/a (no search)", "+5.00 pp top-1")
    assert m["vs random @ digits"][0] == "n/a (no search)"
    open_section(small, "Search cost at equal accuracy")  # the table of every fixed-length gain
    table = [d.value for d in small.dataframe if "Efficiency gain, MACs (%)" in d.value.columns][0]
    controls = table[table["Baseline"].isin(["uniform", "random"])]
    assert len(controls) and controls["Efficiency gain, MACs (%)"].isna().all()
    assert set(controls["Note"]) == {"n/a (no search)"}
    assert (table.loc[~table["Baseline"].isin(["uniform", "random"]), "Note"] == "").all()


def test_cite_button_gives_the_software_at_its_commit_and_the_methods_reference(small):
    from mpqbench.board import references as refs

    frame = lb.load_results(FIXTURES / "results_small").frame
    commit = sorted(set(frame["git_commit"].dropna()))[0]
    code = "\n".join(c.value for c in small.code)
    assert f"@misc{{{refs.software_key(commit)}," in code and f"git commit {commit}" in code
    assert "cai2020edmips" in code  # the best entry (edmips-target) cites EdMIPS
    small.selectbox(key="cite_method").set_value("asga").run()
    code = "\n".join(c.value for c in small.code)
    assert "@inproceedings{ma2025asga," in code and "cai2020edmips" not in code
    small.selectbox(key="cite_method").set_value("uniform").run()  # a control cites the software alone
    code = "\n".join(c.value for c in small.code if "@misc" in c.value)
    assert "@inproceedings" not in code


def test_charts_colour_each_method_with_its_fixed_colour(small):
    from mpqbench.board import palette

    found = 0
    open_section(small, "Accuracy vs BitOPs and search cost")
    for el in small.get("vega_lite_chart"):
        spec = json.loads(el.proto.spec)
        for layer in spec.get("layer", [spec]):
            scale = ((layer.get("encoding") or {}).get("color") or {}).get("scale") or {}
            if "domain" in scale:
                found += 1
                assert scale["range"] == [palette.method_colour(m) for m in scale["domain"]]
    assert found >= 2


def test_proxy_filter_changes_rows_and_url(small):
    small.sidebar.multiselect(key="proxy").set_value(["digits"]).run()
    df = board(small)
    assert ("edmips-target", "fashion-mnist") not in entries(df)
    assert ("asga", "fmnist-subset") not in entries(df)
    assert len(df) == 8 and df["Rank"].tolist() == list(range(1, 9)) and df.loc[0, "Method"] == "asga"
    assert qp(small, "proxy") == ["digits"]


def test_method_and_budget_filters(small):
    small.sidebar.multiselect(key="method").set_value(["gmpq", "hawq"]).run()
    assert entries(board(small)) == [("gmpq", "digits"), ("hawq", "digits")]
    small.sidebar.selectbox(key="budget").set_value("w2a2").run()
    assert not [d for d in small.dataframe if "Rank" in d.value.columns]  # w2a2 has neither method
    assert any("No runs match" in i.value for i in small.info)
    small.sidebar.multiselect(key="method").set_value(["asga", "edmips", "uniform"]).run()
    df = board(small)
    assert df["Method"].tolist() == ["asga", "edmips", "uniform"] and df["Top-1 (%)"].tolist() == [80.0, 78.0, 75.0]


def test_failed_runs_count_in_status_and_the_toggle_lists_them(small):
    row = board(small).set_index("Method").loc["edmips"]
    assert row["Status"] == "2 ok, 1 failed" and row["Seeds (n)"] == 2 and row["Top-1 (%)"] == 86.5
    assert row["Reproduce (snakemake)"].count("results/runs/") == 3  # the failed seed can be rerun too
    small.selectbox(key="detail").set_value("edmips @ digits").run()
    assert small.selectbox(key="detail_seed").options == ["0", "1"]
    small.sidebar.toggle(key="failed").set_value(True).run()
    assert small.selectbox(key="detail_seed").options == ["0", "1", "2"]
    assert board(small).set_index("Method").loc["edmips"]["Top-1 (%)"] == 86.5
    assert qp(small, "failed") == ["1"]


def test_view_is_restored_from_the_url(monkeypatch):
    at = run_app(monkeypatch, FIXTURES / "results_small",
                 query={"arch": "mobilenet_v2", "budget": "w4a4", "method": ["gmpq"]})
    assert entries(board(at)) == [("gmpq", "digits")]
    bogus = run_app(monkeypatch, FIXTURES / "results_small", query={"arch": "nope", "proxy": ["nope"]})
    assert len(board(bogus)) == 10  # unknown values fall back to the defaults


def test_policy_detail_shows_every_method_at_the_budget(small):
    assert small.selectbox(key="detail").value == "—"  # nothing selected: no heatmaps on first load
    assert not [d for d in small.dataframe if "layer" in d.value.columns]
    small.selectbox(key="detail").set_value("gmpq @ digits").run()
    assert not small.exception
    assert qp(small, "detail") == ["gmpq @ digits"]
    tables = [d.value for d in small.dataframe if "layer" in d.value.columns]
    assert len(tables) == 1
    pol = tables[0]
    assert list(pol.columns[:2]) == ["layer", "gmpq @ digits"] and len(pol.columns) == 11
    assert pol["layer"].tolist()[:3] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"] and len(pol) == 18
    assert set(pol["uniform @ digits"]) == {"3/3"}
    assert any("gmpq" in c.value and "snakemake --cores 2" in c.value for c in small.code)
    # seed choice: the failed edmips seed 2 still has a policy and shows its reason
    small.selectbox(key="detail").set_value("edmips @ digits").run()
    small.sidebar.toggle(key="failed").set_value(True).run()
    small.selectbox(key="detail_seed").set_value(2).run()
    assert any("diverged" in md.value for md in small.markdown)


def test_empty_results_dir_says_so(monkeypatch, tmp_path):
    (tmp_path / "runs").mkdir()
    at = run_app(monkeypatch, tmp_path)
    assert any(i.value.startswith("No results") for i in at.info)
    assert [d.value for d in at.dataframe if "Rank" in d.value.columns] == []
    at = run_app(monkeypatch, tmp_path, query={"tab": PUBLISHED})
    assert any("source_url" in d.value.columns for d in at.dataframe)  # the published tab still works


def test_missing_results_dir_is_a_clear_error(monkeypatch, tmp_path):
    at = run_app(monkeypatch, tmp_path / "absent")
    assert any("does not exist" in e.value for e in at.error)


def test_malformed_records_are_listed_and_the_rest_is_shown(monkeypatch):
    at = run_app(monkeypatch, FIXTURES / "results_malformed")
    assert entries(board(at)) == [("asga", "digits")]
    assert any("2 results file(s) skipped" in e.label for e in at.expander)
    assert any("not readable JSON" in c.value for c in at.code)


def test_only_malformed_records_is_a_clear_error(monkeypatch, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad.json").write_text("{not json")
    at = run_app(monkeypatch, tmp_path)
    assert any("malformed" in e.value for e in at.error)


def test_csv_only_results(monkeypatch, tmp_path):
    frame = lb.load_results(FIXTURES / "results_small").frame
    lb.write_leaderboard_csv(frame, tmp_path / "leaderboard.csv")
    at = run_app(monkeypatch, tmp_path)
    assert len(board(at)) == 10
    assert any("loaded from leaderboard.csv" in i.value for i in at.info)


def test_malformed_csv_is_a_clear_error(monkeypatch, tmp_path):
    (tmp_path / "leaderboard.csv").write_text("just,some\ncolumns,here\n")
    at = run_app(monkeypatch, tmp_path)
    assert any("lacks column" in e.value for e in at.error)


def test_committed_results_run(monkeypatch):
    at = run_app(monkeypatch, None)  # results/ next to the app, whatever it holds now
    assert at.title[0].value == "mpqbench leaderboard"
    assert at.error or at.info or at.dataframe


def test_published_tab_is_separate_and_bad_file_is_reported(monkeypatch, tmp_path):
    at = run_app(monkeypatch, FIXTURES / "results_small")
    assert [t.label for t in at.tabs] == ["Measured leaderboard", "Per-layer policy",
                                          "Accuracy vs BitOPs and search cost", "Search cost at equal accuracy",
                                          "Provenance", PUBLISHED]
    assert not [d for d in at.dataframe if "source_url" in d.value.columns]  # lazy: not in the measured tab
    at = run_app(monkeypatch, FIXTURES / "results_small", query={"tab": PUBLISHED})
    pub = [d.value for d in at.dataframe if "source_url" in d.value.columns]
    assert len(pub) == 1 and len(pub[0]) == len(lb.load_published(ROOT / "baselines" / "published.csv"))
    assert not [d for d in at.dataframe if "Rank" in d.value.columns]  # never mixed into the ranking
    at.multiselect(key="pub_arch").set_value(["resnet50"]).run()
    assert set(at.dataframe[0].value["arch"]) == {"resnet50"}
    bad = tmp_path / "published.csv"
    bad.write_text("method\nx\n")
    at = run_app(monkeypatch, FIXTURES / "results_small", published=bad, query={"tab": PUBLISHED})
    assert any("lacks column" in e.value for e in at.error)


def test_results_are_found_from_any_working_directory(monkeypatch, tmp_path):
    shutil.copytree(FIXTURES / "results_small", tmp_path / "r")
    monkeypatch.chdir(tmp_path)
    at = run_app(monkeypatch, Path("r").resolve())
    assert len(board(at)) == 10


def test_budget_with_only_failed_runs(monkeypatch, tmp_path):
    shutil.copytree(FIXTURES / "results_small", tmp_path / "r")
    for path in (tmp_path / "r" / "runs" / "default" / "resnet20" / "w2a2").rglob("*.json"):
        rec = json.loads(path.read_text())
        path.write_text(json.dumps({**rec, "status": "failed", "metrics": None, "reason": "killed (OOM)"}))
    at = run_app(monkeypatch, tmp_path / "r", query={"budget": "w2a2"})
    assert any("No runs match" in i.value for i in at.info)
    at.sidebar.toggle(key="failed").set_value(True).run()
    assert not at.exception
    df = board(at)
    assert df["Status"].tolist() == ["0 ok, 1 failed"] * 3 and df["Rank"].isna().all()
    assert any("No successful run" in i.value for i in at.info)


def test_cost_measure_with_proxy_teacher(monkeypatch, tmp_path):
    """gmpq trains a 2 TMAC teacher on the proxy first: ASGA's gain over it grows from +100% to +200%."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "results_small", results)
    for path in (results / "runs").rglob("*.json"):
        rec = json.loads(path.read_text())
        if rec["method"] == "gmpq":
            rec["search"]["teacher_macs"] = 2e12
            path.write_text(json.dumps(rec))
    (results / "leaderboard.csv").unlink(missing_ok=True)
    at = run_app(monkeypatch, results)
    at.radio(key="asga_proxy").set_value("digits").run()
    assert metrics(at)["vs gmpq @ digits"] == ("+100%", "+1.75 pp top-1")
    at.sidebar.radio(key="cost").set_value("macs_teacher").run()
    assert not at.exception
    assert metrics(at)["vs gmpq @ digits"] == ("+200%", "+1.75 pp top-1")  # (4 + 2) / 2 - 1
    assert metrics(at)["vs edmips @ digits"][0] == "-50%"  # no teacher on either side
    row = board(at).set_index("Method").loc["gmpq"]
    assert row["Proxy teacher (TMAC)"] == pytest.approx(2.0)


# ------------------------------------------------------------------ equal terms (tests/fixtures/results_curves)
# w3a3 by hand (see tests/test_leaderboard.py): ranked asga-rhomin 90, asga 88, edmips-target 87, uniform 86.5,
# gmpq-asga 84.5; edmips-argmax (91) uses 44 % of the budget; asga's gain at equal accuracy over edmips-target
# is 4.714 on MACs [4.333, 5.4] and 3.762 on wall seconds [3.444, 4.333].
CURVES = FIXTURES / "results_curves"


@pytest.fixture
def curves(monkeypatch) -> AppTest:
    return run_app(monkeypatch, CURVES)


def test_budget_window_hides_unmatched_entries_until_toggled(curves):
    assert curves.sidebar.selectbox(key="budget").value == "w3a3"
    df = board(curves)
    assert entries(df) == [("asga-rhomin", "digits"), ("asga", "digits"), ("edmips-target", "fashion-mnist"),
                           ("uniform", "digits"), ("gmpq-asga", "digits")]  # no argmax, no other-length entries
    assert df["Budget used (%)"].tolist() == pytest.approx([(1 + 159 / 162 + 156 / 162) / 3 * 100] * 5)
    assert set(df["Budget window"]) == {"matched"}
    assert any("edmips-argmax @ digits: not budget-matched (budget used 44.4%, window \\[0.9, 1\\])" in w.value
               for w in curves.warning)  # record text goes through Markdown escaping
    curves.sidebar.toggle(key="unmatched").set_value(True).run()
    df = board(curves)
    assert df.loc[0, "Method"] == "edmips-argmax" and df.loc[0, "Budget window"] == "not budget-matched"
    assert df.loc[0, "Budget used (%)"] == pytest.approx(400 / 9) and df.loc[0, "Extraction"] == "argmax"
    assert len(df) == 6 and qp(curves, "unmatched") == ["1"] and not curves.warning


def test_ties_and_intervals_in_the_table(curves):
    df = board(curves).set_index("Method")
    assert df["Tied with best"].tolist() == ["best", "no", "no", "tied", "no"]
    assert df.loc["uniform", "Paired diff vs best (pp)"] == pytest.approx(-3.5)
    assert df.loc["uniform", "± paired 95% CI (pp)"] == pytest.approx(4.302652729749464 * 3.25 ** 0.5 / 3 ** 0.5)
    assert df.loc["asga", "± 95% CI (pp)"] == pytest.approx(4.302652729749464 * 0.5 / 3 ** 0.5)
    assert metrics(curves)["Its top-1 (%)"][0] == "90.00 ± 1.24"
    assert any("Statistically tied with the best" in c.value and "uniform @ digits" in c.value for c in curves.caption)


def test_equal_accuracy_gain_and_curves_are_shown(curves):
    m = metrics(curves)
    assert m["At equal accuracy vs edmips-target @ fashion-mnist (search MACs)"][0] == "+471% [+433%, +540%]"
    assert m["Reference cost at ASGA's accuracy (TMAC)"][0] == "5.71"
    assert m["vs edmips-target @ fashion-mnist"] == ("+300%", "+1.00 pp top-1")  # the fixed-length gain beside it
    open_section(curves, "Search cost at equal accuracy")
    table = [d.value for d in curves.dataframe if "Gain at equal accuracy, MACs [95% CI]" in d.value.columns][0]
    assert dict(zip(table["Method"], table["Gain at equal accuracy, MACs [95% CI]"])) == {
        "asga": "+471% [+433%, +540%]", "asga-rhomin": "> +700% [+700%, +∞]", "gmpq-asga": "< -67% [-100%, -67%]"}
    assert table["Fixed-length gain, MACs"].tolist() == ["+300%", "+300%", "+33%"]
    assert table["± 95% CI (pp)"].tolist() == [1.24, 1.24, 1.24]  # each entry's mean top-1 with its interval
    assert len(curves.get("vega_lite_chart")) == 1  # the curves
    open_section(curves, "Accuracy vs BitOPs and search cost")
    assert len(curves.get("vega_lite_chart")) == 2  # accuracy vs BitOPs, vs search cost
    curves.sidebar.radio(key="cost").set_value("wall_s").run()
    assert metrics(curves)["At equal accuracy vs edmips-target @ fashion-mnist (wall seconds)"][0] == \
        "+376% [+344%, +433%]"


def test_policy_view_plots_asgas_radius_and_budget_use(curves):
    before = len(curves.get("vega_lite_chart"))
    curves.selectbox(key="detail").set_value("asga @ digits").run()
    assert not curves.exception
    assert any("budget used 100.0% (window [0.9, 1]: matched)" in md.value and "extraction ilp" in md.value
               for md in curves.markdown)
    assert len(curves.get("vega_lite_chart")) == before + 3  # the radius trace + W and A heatmaps
    assert any(c.value.startswith("ρ over 8 logged points: max 0.1, last 0; below 0.001 at 2 of them "
                                  "(first at step 70)") for c in curves.caption)
    assert any("Entropy" in e.label for e in curves.expander)
    # heatmaps compare the ranked entries only (no other-length curve points)
    pol = [d.value for d in curves.dataframe if "layer" in d.value.columns][0]
    assert list(pol.columns) == ["layer", "asga @ digits", "asga-rhomin @ digits", "edmips-target @ fashion-mnist",
                                 "uniform @ digits", "gmpq-asga @ digits"]
    curves.selectbox(key="detail_seed").set_value(1).run()
    assert any("budget used 98.1%" in md.value for md in curves.markdown)
    curves.selectbox(key="detail").set_value("edmips-target @ fashion-mnist").run()  # no radius in its trace
    assert len(curves.get("vega_lite_chart")) == before + 2


def test_hostile_record_is_quoted_and_escaped(monkeypatch, tmp_path):
    """Issue 14: a record whose method is shell/Markdown code is shown as text and its commands run nothing."""
    import subprocess

    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "results_small", results)
    marker = tmp_path / "marker"
    marker.mkdir()
    method = f"$(touch {marker}/m)[x](javascript:alert(1))"
    for path in (results / "runs" / "default" / "resnet20" / "w2a2" / "edmips").rglob("*.json"):
        rec = json.loads(path.read_text())
        rec["method"] = method
        path.write_text(json.dumps(rec))
    at = run_app(monkeypatch, results, query={"budget": "w2a2"})
    row = board(at).set_index("Method").loc[method]
    at.selectbox(key="detail").set_value(f"{method} @ digits").run()
    assert not at.exception
    code = [c.value for c in at.code if "snakemake --cores 2" in c.value][0]
    lines = [row["Reproduce (snakemake)"], row["Reproduce search (mpqbench)"], *code.splitlines()]
    stubs = 'mpqbench() { :; }; snakemake() { :; }; '
    for line in lines:
        assert f"'{method}'" in line or f"/{method}/" in line
        subprocess.run(["bash", "-c", stubs + line], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    assert list(marker.iterdir()) == []
    shown = [m.value for m in at.markdown if "seed 0" in m.value][0]
    assert "\\$(touch" in shown and "\\[x\\](javascript:alert(1))" in shown and "[x](javascript" not in shown


def test_app_skips_exactly_what_aggregate_skips(monkeypatch, tmp_path):
    """One loader: a relabelled copy, an impossible top-1, an off-canon budget name and a binary file are
    skipped by the app with the very problem lines ``mpqbench aggregate``'s loader reports."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "results_small", results)
    asga = results / "runs" / "default" / "resnet20" / "w3a3" / "asga"
    rec = json.loads((asga / "digits-to-fashion-mnist-s0.json").read_text())
    (asga / "digits-to-fashion-mnist-s3.json").write_text(json.dumps({**rec, "seed": 3}))  # same run_id
    (asga / "digits-to-fashion-mnist-s4.json").write_text(json.dumps(
        {**rec, "seed": 4, "run_id": "0000000000a4", "metrics": {**rec["metrics"], "top1": 200.0}}))
    (asga / "digits-to-fashion-mnist-s5.json").write_text(json.dumps(
        {**rec, "seed": 5, "run_id": "0000000000a5", "budget": {**rec["budget"], "name": "W3A3"}}))
    (results / "runs" / "x.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    _, problems = lb.load_records(results / "runs")
    assert len(problems) == 4
    at = run_app(monkeypatch, results)
    assert any("4 results file(s) skipped" in e.label for e in at.expander)
    assert "\n".join(problems) in [c.value for c in at.code]
    assert sorted(at.sidebar.selectbox(key="budget").options) == ["w2a2", "w3a3"]  # no "W3A3" group
    df = board(at)
    row = df[(df["Method"] == "asga") & (df["Proxy (search data)"] == "digits")].iloc[0]
    assert row["Seeds (n)"] == 3 and row["Top-1 (%)"] == pytest.approx(89.0)


FIRST_VIEW_PROBE = r"""
import json, sys
import streamlit.elements.arrow as arrow
from streamlit.testing.v1 import AppTest

calls = []
original = arrow.ArrowMixin.dataframe

def dataframe(self, data=None, *args, **kwargs):
    cols = list(getattr(data, "columns", []))
    if "Rank" in cols:
        calls.append({"torch": "torch" in sys.modules, "commands": "Reproduce (snakemake)" in cols})
    return original(self, data, *args, **kwargs)

arrow.ArrowMixin.dataframe = dataframe
at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.run()
assert not at.exception, [e.value for e in at.exception]
final = list(at.dataframe[0].value.columns)
print(json.dumps({"calls": calls, "final_has_commands": "Reproduce (snakemake)" in final}))
"""


def test_first_view_sends_the_ranking_before_importing_torch(tmp_path):
    """A fresh server's first view: the ranking goes out before the method registry (and torch) is imported
    for the reproduce commands; the table is then redrawn with them in the same place. (The committed results:
    their records carry their role, so nothing else needs the registry.)"""
    import os
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(FIRST_VIEW_PROBE)
    env = {**os.environ, lb.RESULTS_ENV: str(ROOT / "results"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(probe), APP], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["calls"][0] == {"torch": False, "commands": False}  # the first paint: no torch, no commands
    assert got["calls"][-1]["commands"] and got["final_has_commands"]  # redrawn with them
    assert len(got["calls"]) == 2
