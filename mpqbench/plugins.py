"""Method discovery and the suite's methods checked against the registry.

:func:`discover` fills :data:`mpqbench.search.METHODS`: it imports the methods that ship in ``mpqbench``
(the controls, the differentiable search with ASGA) and loads every module named in the Python entry-point
group ``mpqbench.methods``. This repository declares its ``baselines`` package there (``pyproject.toml``),
and ``baselines/__init__.py`` imports each of its files, so an in-repo baseline is one new file; a package
outside this repository adds methods by declaring its own module in the same group. The top level calls
it: the CLI, the workflow, the app and the tests. Nothing here names a baseline.

:func:`resolve_suite` is the registry half of a suite file's validation (the workflow runs it at parse
time, before any job): every entry names a registered method, its hyper-parameters parse, ``needs_teacher``,
``teacher_from`` and the entry's role come from the method class, and every budget is reachable with the candidates.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from mpqbench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from mpqbench.config import SuiteConfig

ENTRY_POINT_GROUP = "mpqbench.methods"
BUILTIN_MODULES = ("mpqbench.search.controls", "mpqbench.search.differentiable")

_DISCOVERED = False


def discover() -> list[str]:
    """Import the built-in methods and every ``mpqbench.methods`` entry point (once); the method names."""
    global _DISCOVERED
    from mpqbench.search import list_methods

    if not _DISCOVERED:
        _DISCOVERED = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plug-in is named, not a traceback
                raise UserError(f"the method plug-in {ep.name!r} ({ep.value}) failed to load: "
                                f"{type(exc).__name__}: {exc}; fix or uninstall it") from None
    return list_methods()


def budget_feasible(budget: str, w: list[int], a: list[int]) -> bool:
    """Whether some policy over the candidates meets a uniform-reference budget ``w<X>a<Y>``.

    The budget is Σ_l MACs_l·X·Y and the cheapest policy is Σ_l MACs_l·min(w)·min(a), so the answer does not
    depend on the architecture: min(w)·min(a) ≤ X·Y."""
    import re

    m = re.fullmatch(r"w([0-9.]+)a([0-9.]+)", budget)
    if m is None:
        return False
    return min(w) * min(a) <= float(m.group(1)) * float(m.group(2))


def resolve_suite(suite: "SuiteConfig", *, source: str = "config") -> "SuiteConfig":
    """``suite`` with each method entry's ``teacher`` and ``role`` taken from its method class, after checking
    it against the registry (one line per problem, all at once → :class:`UserError`)."""
    from pydantic import ValidationError

    from mpqbench.search import METHODS

    discover()
    problems: list[str] = []
    methods = {}
    for label, m in suite.methods.items():
        if m.method not in METHODS:
            problems.append(f"methods.{label}.method: unknown method {m.method!r}; registered: "
                            f"{', '.join(METHODS.names())}")
            continue
        cls = METHODS.get(m.method)
        try:
            cls.Hparams(**m.hparams)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"methods.{label}.hparams.{where}: {err['msg']} (hyper-parameters of {m.method}: "
                            f"{', '.join(cls.Hparams.model_fields) or 'none'})")
        if m.teacher is not None and m.teacher != cls.needs_teacher:
            problems.append(f"methods.{label}.teacher: {m.teacher} contradicts {m.method}, which "
                            f"{'needs' if cls.needs_teacher else 'does not use'} a teacher; delete the key")
        if m.teacher_from is not None and m.teacher_from != cls.teacher_from:
            problems.append(f"methods.{label}.teacher_from: {m.teacher_from!r} contradicts {m.method}, whose FP model "
                            f"comes from the {cls.teacher_from}; delete the key")
        if m.role is not None and m.role == "ablation" and cls.role != "proposed":
            problems.append(f"methods.{label}.role: an ablation is a variant of a proposed method; {m.method} is a "
                            f"{cls.role}")
        methods[label] = m.model_copy(update={"teacher": cls.needs_teacher, "teacher_from": cls.teacher_from,
                                              "role": m.role or cls.role})
    for arch in suite.archs:
        cand = suite.candidates_for(arch)
        for budget in suite.budgets_for(arch):
            if not budget_feasible(budget, cand.w, cand.a):
                where = f"archs.{arch}.budgets" if suite.archs[arch].budgets else "budgets"
                problems.append(f"{where}: {budget} is below the cheapest policy W{min(cand.w)}A{min(cand.a)} of "
                                f"{arch}'s candidates; raise the budget or add lower bit-widths")
    if problems:
        raise UserError(f"{source} does not match the method registry:\n" + "\n".join(problems))
    return suite.model_copy(update={"methods": methods})
