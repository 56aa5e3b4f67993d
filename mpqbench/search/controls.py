"""The controls every benchmark needs: the uniform policy, a budget-matched random policy, and the
budget-matched extraction with uniform preferences (``uniform-p``)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mpqbench.cost import parse_budget
from mpqbench.errors import UserError
from mpqbench.search import Method, NoHparams, SearchContext, SearchOutcome, register_method


@register_method("uniform")
class Uniform(Method):
    """The uniform policy named by the budget (``w3a3`` → W3A3 everywhere).

    A fractional reference (``w2.5a2.5``) has no uniform policy; then the uniform (w, a) pair of the
    candidates with the most BitOPs that still fits is used (W2A3 for w2.5a2.5), ties to more weight bits.
    """

    Hparams = NoHparams
    runs_network = iterative = False
    role = "control"

    def search(self, ctx: SearchContext, hp: BaseModel) -> SearchOutcome:
        # A control runs no network: its search cost is the wall time of this choice, and 0 MACs.
        w_ref, a_ref = parse_budget(ctx.budget_name)
        if float(w_ref).is_integer() and float(a_ref).is_integer() and w_ref in ctx.w_candidates and a_ref in ctx.a_candidates:
            w, a = int(w_ref), int(a_ref)
        else:
            fits = [(w * a, w, a) for w in ctx.w_candidates for a in ctx.a_candidates if w * a <= w_ref * a_ref]
            if not fits:
                raise UserError(f"no uniform policy of the candidates fits budget {ctx.budget_name}; lower the candidates")
            _, w, a = max(fits)
        return SearchOutcome(layers={n: (w, a) for n in ctx.searchable}, epochs=0)


class RandomHparams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float | None = Field(None, ge=0, le=1, description="accept a draw when its BitOPs are within [low, 1] × budget; "
                              "None = the suite's budget window floor (--budget-floor, 0.9 by default)")
    max_draws: int = Field(1_000_000, description="give up after this many rejected draws")


@register_method("random")
class RandomPolicy(Method):
    """Per-layer bits drawn uniformly from the candidates, rejected unless within 90–100% of the budget."""

    Hparams = RandomHparams
    runs_network = iterative = False
    role = "control"

    def search(self, ctx: SearchContext, hp: RandomHparams) -> SearchOutcome:
        rng = np.random.default_rng(ctx.seed)
        macs = np.array([ctx.target_macs[n] for n in ctx.searchable], dtype=np.float64)
        ws, as_ = np.array(ctx.w_candidates), np.array(ctx.a_candidates)
        budget = ctx.budget_bitops_g * 1e9
        low = ctx.budget_floor if hp.low is None else hp.low
        chunk = 20_000
        for _ in range(0, hp.max_draws, chunk):
            w = ws[rng.integers(len(ws), size=(chunk, len(macs)))]
            a = as_[rng.integers(len(as_), size=(chunk, len(macs)))]
            bitops = (w * a * macs).sum(axis=1)
            ok = np.flatnonzero((bitops >= low * budget) & (bitops <= budget))
            if ok.size:
                i = ok[0]
                layers = {n: (int(w[i, j]), int(a[i, j])) for j, n in enumerate(ctx.searchable)}
                return SearchOutcome(layers=layers, epochs=0)
        raise UserError(
            f"no random policy within {low:.0%}-100% of budget {ctx.budget_name} in {hp.max_draws} draws; "
            "widen the window with --hp low=0.8 or change the candidates"
        )


@register_method("uniform-p")
class UniformPreference(Method):
    """The budget-matched extraction of the differentiable searches (:mod:`mpqbench.search.extract`, ``ilp``)
    applied to uniform preferences: every policy inside the budget window [floor, 1] × budget is equally
    probable, and seeded i.i.d. tie-breaking costs pick one. The control for the question "does a search's
    learned preference add anything beyond filling the budget?"; it runs no network (0 MACs)."""

    Hparams = NoHparams
    runs_network = iterative = False
    role = "control"

    def search(self, ctx: SearchContext, hp: BaseModel) -> SearchOutcome:
        from mpqbench.search.extract import extract

        flat = {n: {"w": {b: -np.log(len(ctx.w_candidates)) for b in ctx.w_candidates},
                    "a": {b: -np.log(len(ctx.a_candidates)) for b in ctx.a_candidates}} for n in ctx.searchable}
        layers, _ = extract(flat, ctx.target_macs, ctx.budget_bitops_g, mode="uniform-p",
                            floor=ctx.budget_floor, seed=ctx.seed, order=ctx.searchable)
        return SearchOutcome(layers=layers, epochs=0, extraction="uniform-p")
