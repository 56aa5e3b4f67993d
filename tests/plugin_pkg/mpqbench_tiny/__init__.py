"""A method from outside the repository: the highest uniform weight bits that fit, activations at the lowest."""

from mpqbench.search import Method, NoHparams, SearchContext, SearchOutcome, register_method


@register_method("tiny-wide-weights")
class WideWeights(Method):
    Hparams = NoHparams
    runs_network = iterative = False
    role = "control"

    def search(self, ctx: SearchContext, hp) -> SearchOutcome:
        a = min(ctx.a_candidates)
        for w in sorted(ctx.w_candidates, reverse=True):
            layers = {n: (w, a) for n in ctx.searchable}
            if ctx.bitops_g(layers) <= ctx.budget_bitops_g:
                break
        return SearchOutcome(layers=layers, epochs=0)
