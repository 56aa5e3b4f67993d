"""HAWQ-V3-style (Dong et al., ICML 2021; traces as in HAWQ-V2): Hessian-trace sensitivity and an ILP.

On the FP teacher pretrained on the proxy (``mpqbench pretrain``), in eval mode: the average Hessian trace
of each searchable layer's weight by Hutchinson's estimator on ``num_batches`` proxy batches (PyHessian's
stopping rule), Ω_l(b) = Tr(H_l)/n_l · ‖Q_b(W_l) − W_l‖² with the harness's LSQ-initialised quantizer, and
one bit-width per layer, weights and activations tied, minimising Σ Ω under the target-geometry BitOPs
budget (:mod:`mpqbench.ilp`). Logic in :mod:`mpqbench.hessian`; this file is the method wrapper.

Deviations from HAWQ-V3: any candidate set instead of {4, 8}; no tying of down-sample convs to their
block's main path; the quantization error uses the harness's quantizer, not HAWQ's.
"""

from __future__ import annotations

from itertools import islice

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mpqbench.data import make_loader
from mpqbench.errors import UserError
from mpqbench.hessian import hawq_policy, hutchinson_traces, layer_weights
from mpqbench.search import Method, SearchContext, SearchOutcome, register_method


class HawqHparams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(128, ge=1, description="proxy images per Hessian batch")
    num_batches: int = Field(1, ge=1, description="proxy batches the Hessian is averaged over (held in memory)")
    max_probes: int = Field(100, ge=1, description="most Rademacher probes (Hessian-vector products)")
    tol: float = Field(1e-3, ge=0, description="stop when every layer's running mean moves less (relative)")


@register_method("hawq")
class Hawq(Method):
    """Average Hessian trace × quantization error, ILP under the BitOPs budget; W and A bits tied."""

    Hparams = HawqHparams
    needs_teacher = True

    def search(self, ctx: SearchContext, hp: HawqHparams) -> SearchOutcome:
        bits = sorted(set(ctx.w_candidates) & set(ctx.a_candidates))
        if not bits:
            raise UserError(f"HAWQ ties weight and activation bits, but the candidates W{ctx.w_candidates} and "
                            f"A{ctx.a_candidates} share none; pass a common bit-width in both")
        model = ctx.load_teacher("HAWQ FP model")
        loader = make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=ctx.seed)
        batches = list(islice(iter(loader), hp.num_batches))
        stats: dict = {}
        traces = hutchinson_traces(model, nn.CrossEntropyLoss(), batches, layer_weights(model, ctx.searchable),
                                   tol=hp.tol, max_probes=hp.max_probes, seed=ctx.seed, stats=stats, meter=ctx.meter)
        layers = hawq_policy(model, ctx.searchable, ctx.target_macs, bits, ctx.budget_bitops_g, traces)
        return SearchOutcome(layers=layers, epochs=stats["samples"] / len(ctx.proxy_train),
                             extra={"probes": stats["probes"], "avg_hessian_trace": traces})
