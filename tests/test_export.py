"""``mpqbench export``: LaTeX/Markdown/CSV tables, BibTeX, DVC metrics and the static page of a results folder;
the shipped references; the citation bundle; the results README's generated table.

Hand-checked numbers come from tests/fixtures/results_small (w3a3: edmips-target 89.5 best over 2 seeds, then asga
@ fmnist-subset 89.3, asga @ digits 89.0, ..., uniform 84.0 and random 81.0 that do not search) and results_curves
(asga's gain at equal accuracy over edmips-target +471 % [+433 %, +540 %], fixed length +300 %).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mpqbench import board as lb
from mpqbench import runs
from mpqbench.board import export as ex
from mpqbench.board import references as refs

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def aggregated(src: Path, dest: Path) -> Path:
    """``src``'s runs with the leaderboard.csv and summary.json ``mpqbench aggregate`` writes (torch-free)."""
    shutil.copytree(src / "runs", dest / "runs")
    records, problems = lb.load_records(dest / "runs")
    assert problems == []
    frame = lb.records_to_frame(records)
    (dest / "leaderboard.csv").write_text(lb.frame_to_csv(frame))
    (dest / "summary.json").write_text(json.dumps(lb.summary(frame), indent=2, sort_keys=True))
    return dest


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return aggregated(FIXTURES / "results_small", tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def curves(tmp_path_factory) -> Path:
    return aggregated(FIXTURES / "results_curves", tmp_path_factory.mktemp("curves"))


def group(exp: ex.Export, budget: str, arch: str = "resnet20") -> ex.Group:
    return next(g for g in exp.groups if g.key[1] == arch and g.key[3] == budget)


def md_rows(md: str, heading: str) -> list[list[str]]:
    """The body rows of the Markdown table under ``heading``."""
    block = md.split(heading, 1)[1].split("####", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


# ---------------------------------------------------------------------------------------------- the tables
def test_export_writes_every_file_under_its_layout_name(small, tmp_path):
    written = ex.write_export(small, tmp_path, html=False)
    names = {runs.AGGREGATE_FILES[k] for k in ex.EXPORT_KINDS}
    assert {p.name for p in written} == names == {p.name for p in tmp_path.iterdir()}
    layout = runs.Layout(suite="default", target="fashion-mnist", results_dir="results")
    assert {layout.pattern(k) for k in runs.EXPORT_FILES} == {f"results/{runs.AGGREGATE_FILES[k]}"
                                                              for k in runs.EXPORT_FILES}


def test_markdown_table_by_hand(small):
    md = ex.render_markdown(ex.load(small))
    rows = md_rows(md, "#### default · resnet20 → fashion-mnist · w3a3")
    assert [r[1] for r in rows] == ["edmips-target", "asga", "asga", "asga-sam", "gmpq-asga", "gmpq", "edmips", "hawq",
                                    "uniform", "random"]
    assert [r[0] for r in rows] == [str(i) for i in range(1, 11)]
    best = rows[0]
    assert best[3] == "**89.50 ± 0.00**" and best[4] == "2" and best[5] == "best"
    assert rows[1][2] == "fmnist-subset" and rows[1][3].startswith("89.30 ± ")
    assert rows[8][9:11] == ["0", "no search"]  # uniform does not search
    assert rows[2][9:11] == ["2", "100.0 CPU-s"] and rows[2][-1] == "Ma et al. 2025"  # asga @ digits: 2 T MACs
    assert rows[0][-1] == "Cai & Vasconcelos 2020" and rows[8][-1] == ""
    caption = "Suite default: resnet20 on fashion-mnist at budget w3a3"
    assert caption in md and "code commit 0123456, runs of 2026-01-01 to 2026-01-03; n = 2–3 seeds." in md


def test_best_and_ties_follow_the_paired_test(small):
    g = group(ex.load(small), "w3a3")
    ranked = lb.rank_methods(lb.read_leaderboard_csv(small / "leaderboard.csv"))
    ranked = ranked[(ranked["budget"] == "w3a3") & ranked["rank"].notna()]
    tied = {(m, p): t for m, p, t in zip(ranked["method"], ranked["proxy"], ranked["tied_with_best"])}
    for r in g.rows:
        assert r["best"] == ((r["method"], r["proxy"]) == ("edmips-target", "fashion-mnist"))
        want = tied[(r["method"], r["proxy"])]
        assert (r["tied_with_best"] is None) == pd.isna(want) and (pd.isna(want) or r["tied_with_best"] == bool(want))
    md = ex.render_markdown(ex.load(small))
    for row in md_rows(md, "· w3a3"):
        entry = next(r for r in g.rows if (r["method"], r["proxy"]) == (row[1], row[2]))
        assert row[3].endswith(" †") == bool(entry["tied_with_best"] and not entry["best"])


def test_gains_where_summary_json_defines_them(curves):
    exp = ex.load(curves)
    g = group(exp, "w3a3")
    asga = next(r for r in g.rows if r["method"] == "asga")
    summ = json.loads((curves / "summary.json").read_text())["groups"]["default"]["resnet20"]["fashion-mnist"]["w3a3"]
    assert asga["gain_equal_macs"] == summ["gain_at_equal_accuracy"]["asga@digits"]["value"]
    assert asga["gain_fixed_macs"] == summ["gains"]["asga@digits"]["edmips-target@fashion-mnist"]["gain_macs"]
    row = next(r for r in md_rows(ex.render_markdown(exp), "· w3a3") if r[1] == "asga")
    assert row[11:13] == ["+300%", "+471% [+433%, +540%]"]
    assert all(r[11:13] == ["", ""] for r in md_rows(ex.render_markdown(exp), "· w3a3")
               if r[1] in ("uniform", "edmips-target"))
    # entries outside the budget window: last, without a rank
    assert g.rows[-1]["rank"] is None and g.rows[-1]["method"] == "edmips-argmax"
    assert "(not matched)" in ex._used(g.rows[-1])


def test_latex_is_booktabs_with_caption_label_and_cites(small):
    tex = ex.render_latex(ex.load(small))
    tables = tex.split("\\begin{table*}")[1:]
    assert len(tables) == len(ex.load(small).groups) == 3
    for t in tables:
        assert t.count("\\toprule") == t.count("\\midrule") == t.count("\\bottomrule") == 1
        assert "\\caption{Suite default:" in t and "\\label{tab:mpqbench-default-" in t
        assert t.count("{") == t.count("}") + t.count("\\{") - t.count("\\}")
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert len(labels) == len(set(labels))
    w3 = next(t for t in tables if "at budget w3a3" in t)
    assert "edmips-target~\\cite{cai2020edmips} & fashion-mnist & \\textbf{89.50 $\\pm$ 0.00} & 2 & best" in w3
    assert "\\\\\nuniform" not in w3 and "\nuniform & digits" not in w3  # rows start with their rank
    assert re.search(r"\n9 & uniform & digits & 84\.00 \$\\pm\$ [0-9.]+[^\n]*& 0 & no search", w3)
    assert "LSQ quantizers~\\cite{esser2020lsq}" in w3 and "95 \\% CI" in w3


def test_latex_compiles_with_its_bibliography(small, tmp_path):
    """pdflatex + bibtex on a document that inputs leaderboard.tex and cites from references.bib: no error, no
    undefined citation, no bibtex warning (skipped without a TeX installation)."""
    import subprocess

    if not (shutil.which("pdflatex") and shutil.which("bibtex")):
        pytest.skip("needs pdflatex and bibtex (apt-get install texlive-latex-recommended)")
    ex.write_export(small, tmp_path, html=False)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n"
                                      "\\begin{document}\n\\input{leaderboard}\n\\nocite{*}\n"
                                      "\\bibliographystyle{plain}\n\\bibliography{references}\n\\end{document}\n")

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
        return proc.stdout

    run("pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex")
    assert "Warning" not in run("bibtex", "doc")
    run("pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex")
    log = run("pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex")
    assert "undefined" not in log and (tmp_path / "doc.pdf").stat().st_size > 10_000


def test_latex_escapes_record_text():
    assert ex.tex_escape("a_b%c&d#e$f{g}~^\\") == ("a\\_b\\%c\\&d\\#e\\$f\\{g\\}\\textasciitilde{}"
                                                   "\\textasciicircum{}\\textbackslash{}")
    assert ex.tex_escape("> +156% [+30%, +∞]") == "$>$ +156\\% [+30\\%, +$\\infty$]"


def test_markdown_escapes_record_text(small, tmp_path):
    results = aggregated(FIXTURES / "results_small", tmp_path / "r")
    df = pd.read_csv(results / "leaderboard.csv", dtype=str, keep_default_na=False)
    df.loc[df["method"] == "hawq", "method"] = "x|[y](javascript:z)"
    df.to_csv(results / "leaderboard.csv", index=False)
    summ = json.loads((results / "summary.json").read_text())
    node = summ["groups"]["default"]["resnet20"]["fashion-mnist"]["w3a3"]["entries"]
    node["x|[y](javascript:z)@digits"] = node.pop("hawq@digits")
    (results / "summary.json").write_text(json.dumps(summ))
    md = ex.render_markdown(ex.load(results))
    assert "x\\|\\[y\\](javascript:z)" in md and "[y](javascript" not in md


def test_csv_round_trips_the_numbers(small):
    exp = ex.load(small)
    rows = list(csv.DictReader(io.StringIO(ex.render_csv(exp))))
    assert list(rows[0]) == ex.CSV_COLUMNS
    assert len(rows) == sum(len(g.rows) for g in exp.groups)
    summ = json.loads((small / "summary.json").read_text())["groups"]["default"]["resnet20"]["fashion-mnist"]["w3a3"]
    for r in (r for r in rows if r["budget"] == "w3a3"):
        e = summ["entries"][f"{r['method']}@{r['proxy']}"]
        assert float(r["top1_mean"]) == e["top1_mean"] and int(r["n_seeds"]) == e["n_seeds"]
        assert r["git_commit"] == COMMIT
    asga = next(r for r in rows if r["method"] == "asga-sam")
    assert asga["cite_keys"] == "ma2025asga foret2021sam" and asga["base_method"] == "asga"


def test_bib_has_the_software_at_the_commit_and_every_cited_key(small):
    exp = ex.load(small)
    bib = refs.parse_bib(ex.render_bib(exp))
    assert refs.software_key(COMMIT) in bib and COMMIT in bib[refs.software_key(COMMIT)].text
    cited = {k for keys in re.findall(r"\\cite\{([^}]*)\}", ex.render_latex(exp)) for k in keys.split(",")}
    assert cited and cited <= set(bib)


def test_headline_metrics_are_flat_and_small(small, curves):
    m = ex.headline_metrics(ex.load(curves))
    assert all(isinstance(v, (int, float)) or v is None for v in m.values()) and len(m) <= 20
    assert m["w3a3_best_top1"] == 90.0 and m["w3a3_asga_top1"] == 88.0
    assert m["w3a3_asga_gain_equal_acc"] == pytest.approx(4.714, abs=1e-3)
    assert m["w3a3_asga_gain_equal_acc_bound"] == 0 and m["w3a3_asga_gain_fixed"] == pytest.approx(3.0)
    several = ex.headline_metrics(ex.load(small))  # two archs: keys carry suite_arch_target_budget
    assert "default_resnet20_fashion-mnist_w3a3_best_top1" in several
    assert json.loads(ex.render_metrics(ex.load(small))) == several


def test_export_is_deterministic_and_reads_runs_without_the_csv(small, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ex.write_export(small, a, html=False)
    ex.write_export(small, b, html=False)
    for p in a.iterdir():
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    only_runs = tmp_path / "runs-only"
    shutil.copytree(small / "runs", only_runs / "runs")
    assert ex.render_markdown(ex.load(only_runs)) == (a / runs.AGGREGATE_FILES["table_md"]).read_text()


def test_export_cli(small, tmp_path, capsys):
    from mpqbench.cli import main

    assert main(["export", "--results", str(small), "--out-dir", str(tmp_path), "--no-html"]) == 0
    assert (tmp_path / "leaderboard.tex").is_file() and not (tmp_path / "leaderboard.html").exists()
    assert main(["export", "--results", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--results", str(empty), "--no-html"]) == 2
    assert "neither leaderboard.csv nor runs/" in capsys.readouterr().err


def test_static_page_is_self_contained(small):
    pytest.importorskip("altair")
    from mpqbench.board import palette
    from mpqbench.board.static_html import chart_specs, render_html

    exp = ex.load(small)
    page = render_html(exp, small, bundle="window.vegaEmbed = () => Promise.resolve();")
    assert page.count("<table>") == len(exp.groups) + 1  # one per group + provenance
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    specs = chart_specs(exp)
    assert page.count('class="vega-chart"') == len(specs) >= 3
    scale = specs[0]["layer"][0]["encoding"]["color"]["scale"]
    assert scale["range"] == [palette.method_colour(m) for m in scale["domain"]]
    assert "CC-BY-4.0" in page and "@misc{mpqbench-0123456," in page and "0123456" in page
    assert render_html(exp, small, bundle="x") == render_html(exp, small, bundle="x")


# ------------------------------------------------------------------------------ references and citation bundle
def test_every_method_has_a_checked_reference_row():
    from mpqbench.search import list_methods
    from mpqbench.plugins import discover

    discover()
    table = refs.method_keys()
    bib = refs.bibliography()
    for method in list_methods():
        if method.startswith("tiny-"):  # tests/plugin_pkg
            continue
        assert method in table, f"{method} has no row in mpqbench/data_files/method_references.csv"
    for suite in ("config.yaml", "smoke.yaml", "paper.yaml"):
        for label, entry in yaml.safe_load((ROOT / "config" / suite).read_text())["methods"].items():
            assert label in table or entry.get("method", label) in table, label
    for keys in table.values():
        assert set(keys) <= set(bib)
    for name in ("asga", "edmips", "gmpq", "hawq", "haq", "dq", "hmq", "seam", "limpq", "ompq", "alq", "ewgs"):
        assert table[name], name
    for entry in bib.values():
        assert {"author", "title", "year"} <= set(entry.fields), entry.key
        assert {"booktitle", "journal"} & set(entry.fields), entry.key
    assert "Uhlich" in bib["uhlich2020dq"].fields["author"] and bib["uhlich2020dq"].fields["year"] == "2020"
    assert refs.cite_keys("asga-probe", "asga") == ("ma2025asga",) and refs.cite_keys("uniform") == ()


def test_citation_bundle():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    assert cff["title"] and cff["authors"] and cff["message"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "CC-BY-4.0" in (ROOT / "results" / "LICENSE").read_text()
    assert "CC-BY-4.0" in (ROOT / "results" / "README.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"data_files/*.bib"' in pyproject and '"data_files/*.csv"' in pyproject
    # PEP 639 licence metadata (an SPDX expression), not the deprecated {text = ...} table
    project = tomllib.loads(pyproject)["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def test_streamlit_floor_is_what_the_app_needs():
    """st.tabs(..., bind="query-params") exists from Streamlit 1.65.0 on."""
    import inspect

    st = pytest.importorskip("streamlit")
    floor = re.search(r'"streamlit>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert tuple(map(int, floor.split("."))) >= (1, 65)
    assert "bind" in inspect.signature(st.tabs).parameters
    assert tuple(map(int, st.__version__.split(".")[:2])) >= tuple(map(int, floor.split(".")[:2]))


def test_dvc_metrics_and_plots_read_the_export():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["benchmark"]
    metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stage["metrics"]]
    assert metrics == [f"results/{runs.AGGREGATE_FILES['metrics']}"]
    entries = f"results/{runs.AGGREGATE_FILES['table_csv']}"
    for plot in dvc["plots"]:
        if isinstance(plot, dict):
            spec = next(iter(plot.values()))
            for axis in ("x", "y"):
                (path, column), = spec[axis].items()
                assert path == entries and column in ex.CSV_COLUMNS


# ------------------------------------------------------------------------------------ the committed results
@pytest.mark.parametrize("folder", ["results", "results/extended", "results/archs"])
def test_results_readme_table_is_what_export_writes(folder):
    """Each committed results README's table block is ``render_markdown`` of its folder's results; regenerate it
    with ``python scripts/results_table.py <folder> --write-readme`` (and the folder with ``mpqbench export``)."""
    results = ROOT / folder
    expected = ex.render_markdown(ex.load(results))
    block = ex.readme_block((results / "README.md").read_text())
    assert block is not None, f"{folder}/README.md lost its generated block markers"
    assert block == expected, f"{folder}/README.md's table differs from `mpqbench export`: run " \
                              f"python scripts/results_table.py {folder} --write-readme"
    assert (results / runs.AGGREGATE_FILES["table_md"]).read_text() == expected
