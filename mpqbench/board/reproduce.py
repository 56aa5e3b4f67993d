"""Shell commands that recreate a run (``mpqbench search`` and ``snakemake``) and a record's location.

Both come from the one definition of a run (:mod:`mpqbench.runs`): the suite file whose ``suite:`` is the
record's suite is found under ``config/``, and the search line is the request the workflow itself runs for
that grid cell (:func:`mpqbench.runs.search_request`), the Snakemake line targets the record's path in that
suite's layout (its ``results_dir``) with ``--configfile``. A record of a suite that has no file here (an ad
hoc ``mpqbench search``/``evaluate`` run) gets a search line restated from the settings the record stores.
Every word is shell-quoted (``shlex.quote``): a record whose fields hold ``$(...)``, backticks, ``;`` or
quotes gives a line that passes those characters literally and runs nothing.
"""

from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from mpqbench import runs
from mpqbench.board.common import _clean

# the seed loop's own words, the only ones left unquoted (matched exactly, never built from record data)
_SEED, _OUT = "@SEED@", "policy-s@SEED@.json"
_VERBATIM = {_SEED: '"$s"', _OUT: '"policy-s$s.json"'}


def repo_root() -> Path:
    """The checkout the commands run in (the folder holding ``config/`` and the Snakefile)."""
    from mpqbench.records import REPO_ROOT

    return REPO_ROOT


@functools.lru_cache(maxsize=64)
def _suite(name: str, root: str) -> tuple[Any, str] | None:
    """(resolved suite, its config file relative to ``root``) for a suite name, or None."""
    import yaml

    from mpqbench.config import load_suite
    from mpqbench.errors import UserError

    path = runs.find_suite_config(name, root)
    if path is None:
        return None
    try:
        suite = load_suite(runs.read_yaml(path.read_text()), source=str(path))
    except (UserError, OSError, yaml.YAMLError):
        return None
    return suite, path.relative_to(root).as_posix()


def _resolved(name: str, root: str):
    found = _suite(name, root)
    if found is None:
        return None
    return _resolve_cached(name, root), found[1]


@functools.lru_cache(maxsize=64)
def _resolve_cached(name: str, root: str):
    from mpqbench.plugins import resolve_suite

    return resolve_suite(_suite(name, root)[0])


def commands_are_cheap() -> bool:
    """Whether the reproduce commands can be built without first importing the method registry (and torch with
    it, about 3 s on a fresh process): the exact search line needs each method's metadata from its class. A
    view that must appear fast shows its table without the commands first when this is False."""
    import sys

    return "mpqbench.search" in sys.modules


def _budget(rec: Mapping[str, Any]) -> str:
    return rec["budget"]["name"] if isinstance(rec["budget"], Mapping) else rec["budget"]


def _in_suite(suite, rec: Mapping[str, Any]) -> bool:
    entries = suite.entries()
    m = entries.get(rec["method"])
    return (m is not None and rec["arch"] in suite.archs and _budget(rec) in suite.budgets_for(rec["arch"])
            and rec["proxy"] in suite.proxies and rec["target"] == suite.target.dataset)


def record_relpath(rec: Mapping[str, Any], root: str | Path | None = None) -> str:
    """Where the workflow writes a record (relative to the checkout): its suite's layout when the suite file is
    here, else the default layout (``results/``)."""
    root = str(root or repo_root())
    found = _suite(rec["suite"], root)
    layout = runs.Layout.of(found[0]) if found else runs.Layout(suite=rec["suite"], target=rec["target"])
    return layout.record_of(rec)


def _join(argv: list[str]) -> str:
    return " ".join(_VERBATIM.get(word, shlex.quote(word)) for word in argv)


def _given(v: Any) -> bool:
    return _clean(v) is not None


def _from_record(row: Mapping[str, Any], *, seed: Any, out: str) -> runs.SearchRequest:
    """The search restated from what a record (a flat-frame row) stores, for records without a suite file."""
    base = row.get("base_method")
    base = row["method"] if not _given(base) else base
    dataset = row.get("proxy_dataset")
    hparams = {}
    if isinstance(row.get("search_hparams"), str) and row["search_hparams"]:
        hparams = {k: v for k, v in json.loads(row["search_hparams"]).items() if k != "method"}
    opt = {k: row.get(k) for k in ("proxy_subset", "proxy_input_size", "target_input_size", "width")}
    teacher = None
    if _given(row.get("teacher_macs")) and float(row["teacher_macs"]) > 0:  # the FP proxy teacher it needed
        teacher = runs.Layout(suite=row["suite"], target=row["target"]).path("teacher", arch=row["arch"],
                                                                           proxy=row["proxy"])
    return runs.SearchRequest(
        method=base, label=row["method"] if base != row["method"] else None, arch=row["arch"],
        proxy=dataset if _given(dataset) else row["proxy"],
        proxy_label=row["proxy"] if _given(dataset) and dataset != row["proxy"] else None,
        proxy_subset=int(opt["proxy_subset"]) if _given(opt["proxy_subset"]) else None,
        proxy_input_size=int(opt["proxy_input_size"]) if _given(opt["proxy_input_size"]) else None,
        target=row["target"], target_input_size=int(opt["target_input_size"]) if _given(opt["target_input_size"]) else None,
        budget=_budget(row), seed=seed, width=float(opt["width"]) if _given(opt["width"]) else 1.0,
        # unknown candidates (older records): None leaves the options out, the CLI's defaults apply
        w_candidates=[int(v) for v in str(row["w_candidates"]).split(",")] if _given(row.get("w_candidates")) else None,
        a_candidates=[int(v) for v in str(row["a_candidates"]).split(",")] if _given(row.get("a_candidates")) else None,
        hparams=hparams, teacher=teacher, out=out,
        budget_floor=float(row["budget_floor"]) if _given(row.get("budget_floor")) else runs.DEFAULT_BUDGET_FLOOR,
    )


def _search_line(row: Mapping[str, Any], *, seed: Any, out: str, root: str) -> str:
    found = _resolved(row["suite"], root)
    if found is not None and _in_suite(found[0], row):
        req = runs.search_request(found[0], arch=row["arch"], budget=_budget(row), method=row["method"],
                                  proxy=row["proxy"], seed=0, out=out)
        req.seed, req.work_dir, req.progress = seed, None, True  # a standalone run: no workflow state folder
    else:
        req = _from_record(row, seed=seed, out=out)
    return _join(["mpqbench", "search", *req.to_argv()])


def _snakemake_line(rows: list[Mapping[str, Any]], root: str) -> str:
    suite = rows[0]["suite"]
    found = _suite(suite, root)
    configfile = found[1] if found else None
    return runs.snakemake_command(configfile, [record_relpath(r, root) for r in rows])


def reproduce_commands(row: Mapping[str, Any], *, seed: Any = None, out: str = "policy.json",
                       root: str | Path | None = None) -> dict[str, str]:
    """``search`` (the policy search alone, exactly as the workflow runs it for this cell) and ``snakemake``
    (the exact run: search, fine-tune and evaluate, producing the record file, for the record's suite), from a
    record or a row of the flat frame. ``seed``/``out`` override the row's."""
    root = str(root or repo_root())
    seed = row["seed"] if seed is None else seed
    return {"search": _search_line(row, seed=seed, out=out, root=root),
            "snakemake": _snakemake_line([row], root)}


def entry_commands(entry_runs: pd.DataFrame, root: str | Path | None = None) -> dict[str, str]:
    """Reproduce commands for every seed of one entry (rows of the flat frame): a shell loop over the seeds
    for the search (``for s in 0 1 2; do mpqbench search ... --seed "$s" --out "policy-s$s.json"; done``: the
    loop variable is the only expansion, every record value is quoted) and one Snakemake call naming every
    record file."""
    root = str(root or repo_root())
    entry_runs = entry_runs.sort_values("seed")
    rows = [r for _, r in entry_runs.iterrows()]
    seeds = [int(r["seed"]) for r in rows]
    if len(seeds) == 1:
        return reproduce_commands(rows[0], root=root)
    loop = _search_line(rows[0], seed=_SEED, out=_OUT, root=root)
    return {"search": f"for s in {' '.join(map(str, seeds))}; do {loop}; done",
            "snakemake": _snakemake_line(rows, root)}
