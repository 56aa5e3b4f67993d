"""Which paper each method cites, and BibTeX for the methods and for mpqbench itself.

Torch-free. Two data files ship with the package (``mpqbench/data_files/``):

* ``references.bib`` — the checked BibTeX entries;
* ``method_references.csv`` — ``method,keys,note``: the cite keys (space-separated) of a method, keyed by
  the **registered (base) method name** (``asga``, ``edmips``, ``hawq``, ...); a row for a suite label
  (``asga-sam``, ``gmpq-asga``) overrides its base method's row. Controls have an empty ``keys``.

Lookup (:func:`cite_keys`): the label's own row, else its base method's row, else none. A method from a
plug-in package that is not in the table gets no key; the exports then say "no reference". The mapping
lives here, not on the method class, because the leaderboard reads records without importing the method
registry (torch).
"""

from __future__ import annotations

import csv
import functools
import io
import re
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Mapping

BIB_FILE = "references.bib"
MAP_FILE = "method_references.csv"
SOFTWARE_KEY = "mpqbench"
SOFTWARE_TITLE = ("mpqbench: a reproducible benchmark harness and leaderboard for mixed-precision quantization "
                  "policy search")
SOFTWARE_AUTHOR = "{The mpqbench contributors}"


@dataclass(frozen=True)
class BibEntry:
    key: str
    kind: str  # inproceedings, article, software, ...
    fields: Mapping[str, str]
    text: str  # the entry as written in the .bib file

    def short(self) -> str:
        """``Cai & Vasconcelos 2020`` / ``Ma et al. 2025``: the first author's surname for people."""
        names = [n.strip() for n in re.split(r"\s+and\s+", _plain(self.fields.get("author", ""))) if n.strip()]
        surname = [n.split(",")[0].strip() if "," in n else n.split()[-1] for n in names]
        who = (surname[0] if len(surname) == 1 else f"{surname[0]} & {surname[1]}" if len(surname) == 2
               else f"{surname[0]} et al." if surname else self.key)
        return f"{who} {self.fields.get('year', '')}".strip()


def _data(name: str) -> str:
    return resources.files("mpqbench").joinpath("data_files", name).read_text(encoding="utf-8")


def _plain(text: str) -> str:
    """A field value without protective braces and with line breaks folded."""
    return re.sub(r"\s+", " ", text.replace("{", "").replace("}", "")).strip()


def parse_bib(text: str) -> dict[str, BibEntry]:
    """The ``@kind{key, field = {value}, ...}`` entries of a BibTeX text (brace-delimited values, as in the
    shipped file; ``%`` comment lines outside entries are skipped)."""
    entries: dict[str, BibEntry] = {}
    for match in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        body = text[match.end():i - 1]
        fields: dict[str, str] = {}
        for f in re.finditer(r"(\w[\w-]*)\s*=\s*\{", body):
            d, j = 1, f.end()
            while j < len(body) and d:
                d += {"{": 1, "}": -1}.get(body[j], 0)
                j += 1
            fields.setdefault(f.group(1).lower(), body[f.end():j - 1])
        entries[match.group(2)] = BibEntry(match.group(2), match.group(1).lower(), fields, text[match.start():i])
    return entries


@functools.lru_cache(maxsize=1)
def bibliography() -> dict[str, BibEntry]:
    """The shipped entries by cite key."""
    return parse_bib(_data(BIB_FILE))


@functools.lru_cache(maxsize=1)
def method_keys() -> dict[str, tuple[str, ...]]:
    """method (label or base method) -> its cite keys, from ``method_references.csv``."""
    rows = csv.DictReader(io.StringIO(_data(MAP_FILE)))
    return {r["method"].strip(): tuple((r.get("keys") or "").split()) for r in rows if r.get("method")}


def cite_keys(method: str, base_method: str | None = None) -> tuple[str, ...]:
    """The cite keys of a method label (its own row, else its base method's, else none)."""
    table = method_keys()
    if method in table:
        return table[method]
    return table.get(base_method or "", ())


def short_reference(keys: Iterable[str]) -> str:
    """``Cai & Vasconcelos 2020; ...`` for people (empty without keys)."""
    bib = bibliography()
    return "; ".join(bib[k].short() if k in bib else k for k in keys)


def bibtex(keys: Iterable[str]) -> str:
    """The shipped entries of ``keys`` (in the order given, each once), as BibTeX text."""
    bib, seen, out = bibliography(), set(), []
    for k in keys:
        if k in bib and k not in seen:
            seen.add(k)
            out.append(bib[k].text)
    return "\n\n".join(out) + ("\n" if out else "")


def software_bibtex(commit: str | None, *, version: str | None = None, year: str | None = None,
                    key: str = SOFTWARE_KEY) -> str:
    """An entry for mpqbench at one commit. ``@misc`` (with "Software" in the note) so that classic BibTeX
    styles and biblatex both read it without a warning."""
    if version is None:
        from mpqbench import __version__ as version
    commit = (commit or "").strip() or "unknown"
    lines = [f"@misc{{{key},", f"  author = {{{SOFTWARE_AUTHOR}}},", f"  title  = {{{SOFTWARE_TITLE}}},",
             f"  note   = {{Software, version {version}, git commit {commit}, MIT licence}},"]
    if year:
        lines.append(f"  year   = {{{year}}},")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}\n"


def software_key(commit: str | None) -> str:
    """The cite key of the software entry at ``commit`` (``mpqbench`` + the short commit)."""
    short = (commit or "").strip()[:7]
    return f"{SOFTWARE_KEY}-{short}" if short and short != "unknown" else SOFTWARE_KEY
