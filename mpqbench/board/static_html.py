"""``results/leaderboard.html``: the leaderboard as one self-contained page — the export's tables, Altair charts
and the provenance of the runs — that a browser opens from disk, with no server and no network.

The Vega, Vega-Lite and Vega-Embed libraries are inlined once (the bundle of ``vl-convert-python``, the same
one ``altair``'s ``inline`` HTML uses), each chart is a Vega-Lite spec drawn as SVG by ``vegaEmbed``. The
page is deterministic for the same results folder and library versions. Needs ``altair`` and
``vl-convert-python`` (``pip install 'mpqbench[report]'``).
"""

from __future__ import annotations

import functools
import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from mpqbench.board import palette
from mpqbench.board import references as refs
from mpqbench.board.common import _clean
from mpqbench.errors import UserError

DATA_LICENCE = "CC-BY-4.0"
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:0 24px;
color:#222}
h1{margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd}h3{margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:3px 8px;border-bottom:1px solid #e4e4e4;
text-align:right;white-space:nowrap}th{border-bottom:2px solid #444;background:#fafafa;white-space:normal;max-width:130px;vertical-align:bottom}
.tw{overflow-x:auto}
td.l,th.l{text-align:left}tr.best td{font-weight:600}tr.unranked td{color:#777}
.note,.prov{color:#555;font-size:12.5px;max-width:1100px}.charts{display:flex;flex-wrap:wrap;gap:24px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:baseline}
pre{background:#f6f6f6;padding:10px;overflow-x:auto;font-size:12px}
"""


def _vl_version() -> str:
    """The Vega-Lite version of the installed Altair, as vl-convert names its bundles (``6.4``)."""
    import altair as alt
    import vl_convert as vlc

    wanted = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    available = list(vlc.get_vegalite_versions())
    return wanted if wanted in available else available[-1]


@functools.lru_cache(maxsize=2)
def javascript_bundle(vl_version: str | None = None) -> str:
    """Vega + Vega-Lite + Vega-Embed as one script that defines ``window.vegaEmbed``."""
    try:
        import vl_convert as vlc
    except ImportError as exc:
        raise UserError("the static leaderboard needs vl-convert-python and altair: pip install "
                        "'mpqbench[report]' (or pass --no-html)") from exc
    bundle = vlc.javascript_bundle(vl_version=vl_version or _vl_version())
    return bundle.replace("</script", "<\\/script")  # a literal end tag would close the inline script


def _charts(exp) -> list[tuple[str, dict]]:
    """(title, Vega-Lite spec) of every chart: accuracy vs BitOPs per (suite, arch, target), accuracy vs search
    cost per group; colours from :mod:`mpqbench.board.palette`, shapes by proxy."""
    try:
        import altair as alt
    except ImportError as exc:
        raise UserError("the static leaderboard needs altair: pip install 'mpqbench[report]' (or pass --no-html)") \
            from exc
    rows = []
    for g in exp.groups:
        for r in g.rows:
            ci = _clean(r["top1_ci"]) or 0.0
            rows.append({"suite": g.key[0], "arch": g.key[1], "target": g.key[2], "budget": g.key[3],
                         "method": r["method"], "base": r["base_method"], "proxy": r["proxy"],
                         "entry": f"{r['method']} @ {r['proxy']}", "top1": r["top1_mean"], "ci": ci,
                         "lo": r["top1_mean"] - ci, "hi": r["top1_mean"] + ci, "n": r["n_seeds"],
                         "bitops": r["bitops_g_all"], "macs_t": (r["search_macs_processed"] or 0.0) / 1e12,
                         "ranked": r["rank"] is not None})
    if not rows:
        return []
    data = pd.DataFrame(rows)
    scale = alt.Scale(**palette.altair_scale(list(data["method"]), list(data["base"])))
    shapes = palette.proxy_markers(data["proxy"], palette.ALTAIR_SHAPES)
    shape = alt.Shape("proxy:N", title="Proxy", scale=alt.Scale(domain=list(shapes), range=list(shapes.values())))
    colour = alt.Color("method:N", title="Method", scale=scale)
    tooltip = [alt.Tooltip("entry:N", title="method @ proxy"), alt.Tooltip("budget:N"),
               alt.Tooltip("top1:Q", title="top-1 (%)", format=".2f"), alt.Tooltip("ci:Q", title="± 95% CI", format=".2f"),
               alt.Tooltip("n:Q", title="seeds"), alt.Tooltip("bitops:Q", title="BitOPs (G)", format=".4g"),
               alt.Tooltip("macs_t:Q", title="search T MACs", format=".4g")]
    y = alt.Y("top1:Q", title="top-1 on target (%), mean ± 95% CI", scale=alt.Scale(zero=False, padding=12))
    out = []
    for (suite, arch, target), part in data.groupby(["suite", "arch", "target"], sort=True):
        base = alt.Chart(part)
        x = alt.X("bitops:Q", title="BitOPs, all layers (G)", scale=alt.Scale(zero=False, padding=12))
        chart = (base.mark_rule(opacity=0.6).encode(x=x, y="lo:Q", y2="hi:Q", color=colour)
                 + base.mark_point(filled=True, size=70).encode(x=x, y=y, color=colour, shape=shape, tooltip=tooltip))
        n = f"n = {int(part['n'].min())}" + (f"–{int(part['n'].max())}" if part["n"].max() != part["n"].min() else "")
        title = f"{arch} on {target} ({suite}): accuracy vs BitOPs, every budget; {n} seeds"
        out.append((title, chart.properties(width=560, height=340, title=title).to_dict()))
        for budget, sub in part.groupby("budget", sort=False):
            costed = sub[sub["macs_t"] > 0]
            if costed.empty:
                continue
            controls = sub[sub["macs_t"] <= 0]
            zero = ", ".join(sorted(controls["entry"]))
            xc = alt.X("macs_t:Q", title="search cost (T MACs, log)",
                       scale=alt.Scale(type="log", nice=False, padding=12))
            cb = alt.Chart(costed)
            chart = (cb.mark_rule(opacity=0.6).encode(x=xc, y="lo:Q", y2="hi:Q", color=colour)
                     + cb.mark_point(filled=True, size=70).encode(x=xc, y=y, color=colour, shape=shape,
                                                                  tooltip=tooltip))
            if len(controls):  # no search: a dashed line at the control's top-1 (a log axis has no 0)
                chart += alt.Chart(controls).mark_rule(strokeDash=[5, 4], opacity=0.8).encode(
                    y="top1:Q", color=colour, tooltip=tooltip)
            title = f"{arch} @ {budget} ({suite}): accuracy vs search cost"
            sub_title = [f"dashed: controls that do not search (0 MACs, not on the log axis): {zero}"] if zero else []
            out.append((title, chart.properties(width=560, height=340,
                                                title=alt.TitleParams(title, subtitle=sub_title)).to_dict()))
    return out


def _table(g) -> str:
    from mpqbench.board.export import _gains, _num, _search, _top1, _used, _vs_best

    head = ["rank", "method", "proxy", "top-1 (%)", "n", "vs best (pp)", "BitOPs (G)", "budget used", "size (MB)",
            f"search MACs ({g.macs_unit[1]})", "search time", f"gain vs {g.reference}, fixed length",
            "gain at equal accuracy [95% CI]", "reference"]
    left = {"method", "proxy", "reference"}
    cells = ["<tr>" + "".join(f'<th class="{"l" if h in left else ""}">{html.escape(h)}</th>' for h in head) + "</tr>"]
    for r in g.rows:
        top1, n = _top1(r)
        top1 += " †" if (r["tied_with_best"] and not r["best"]) else ""
        macs, time = _search(r, g.macs_unit)
        fixed, equal = _gains(r)
        swatch = f'<span class="swatch" style="background:{palette.method_colour(r["method"], r["base_method"])}"></span>'
        values = ["" if r["rank"] is None else str(r["rank"]), swatch + html.escape(r["method"]), html.escape(r["proxy"]),
                  html.escape(top1), n, html.escape(_vs_best(r)), _num(r["bitops_g_all"], ".3f"), html.escape(_used(r)),
                  _num(r["size_mb"], ".3f"), macs, html.escape(time), html.escape(fixed), html.escape(equal),
                  html.escape(refs.short_reference(r["cite_keys"]))]
        cls = "best" if r["best"] else "unranked" if r["rank"] is None else ""
        cells.append(f'<tr class="{cls}">' + "".join(
            f'<td class="{"l" if h in left else ""}">{v}</td>' for h, v in zip(head, values)) + "</tr>")
    return '<div class="tw"><table>\n' + "\n".join(cells) + "\n</table></div>"


def _provenance(exp, results_dir: str | os.PathLike) -> str:
    import mpqbench
    from mpqbench.board.export import _commits, _dates

    rows = "".join(f"<tr><td class=\"l\">{html.escape(' / '.join(g.key))}</td><td class=\"l\">{html.escape(_commits(g))}"
                   f"</td><td class=\"l\">{html.escape(_dates(g))}</td><td>{len(g.rows)}</td></tr>" for g in exp.groups)
    cost = exp.summary.get("suite_cost") or {}
    wall = "" if cost.get("elapsed_s") is None else (
        f" The suite took {cost['elapsed_s'] / 60:.0f} min of wall time ({cost.get('jobs', '?')} jobs, "
        f"{cost.get('job_time_s', 0) / 3600:.2f} h of job time).")
    return (f'<table><tr><th class="l">group</th><th class="l">code commit</th><th class="l">runs of</th>'
            f"<th>entries</th></tr>{rows}</table>"
            f'<p class="prov">{exp.n_runs} run records, read from {html.escape(Path(exp.source).name or exp.source)} '
            f"and summary.json of {html.escape(Path(results_dir).name or str(results_dir))}/; page made by mpqbench "
            f"{html.escape(mpqbench.__version__)} (<code>mpqbench export</code>).{html.escape(wall)} The results are "
            f"licensed {DATA_LICENCE} (results/LICENSE), the code MIT.</p>")


def render_html(exp, results_dir: str | os.PathLike, *, bundle: str | None = None) -> str:
    """The page (see the module docstring). ``bundle`` replaces the inlined JavaScript (tests)."""
    from mpqbench.board.export import caption, legend, render_bib

    charts = _charts(exp)
    script = javascript_bundle() if bundle is None else bundle
    body = ["<h1>mpqbench leaderboard</h1>",
            '<p class="note">Mixed-precision quantization policies searched on a proxy dataset, fine-tuned and '
            "evaluated on the target at a matched BitOPs budget. One colour per method in every chart, one marker "
            "per proxy dataset.</p>", "<h2>Charts</h2>", '<div class="charts">']
    body += [f'<div><div id="chart{i}" class="vega-chart" aria-label="{html.escape(t)}"></div></div>'
             for i, (t, _) in enumerate(charts)]
    body.append("</div><h2>Tables</h2>")
    for g in exp.groups:
        body += [f"<h3>{html.escape(' · '.join(g.key))}</h3>", f'<p class="note">{html.escape(caption(g))}</p>',
                 _table(g), f'<p class="note">{html.escape(legend(g))}</p>']
    body += ["<h2>Provenance</h2>", _provenance(exp, results_dir), "<h2>Cite</h2>",
             f"<pre>{html.escape(render_bib(exp))}</pre>"]
    specs = json.dumps([spec for _, spec in charts], sort_keys=True, separators=(",", ":")).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>mpqbench leaderboard</title>\n<style>" + _CSS + "</style>\n"
            "<script>\n" + script + "\n</script>\n</head>\n<body>\n" + "\n".join(body) +
            "\n<noscript><p>The charts need JavaScript; the tables above do not.</p></noscript>\n"
            "<script>\nconst specs = " + specs + ";\n"
            "specs.forEach((spec, i) => vegaEmbed('#chart' + i, spec, {actions: false, renderer: 'svg'})"
            ".catch(err => { document.getElementById('chart' + i).textContent = 'chart failed: ' + err; }));\n"
            "</script>\n</body>\n</html>\n")


def chart_specs(exp) -> list[dict[str, Any]]:
    """The Vega-Lite specs of the page (for tests and other front ends)."""
    return [spec for _, spec in _charts(exp)]
