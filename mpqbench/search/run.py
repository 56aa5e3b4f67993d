"""Run one search end to end: build the context, call the method, write the policy JSON.

This is the harness side of the method contract: it resolves the budget on the *target* geometry,
hands the method a :class:`~mpqbench.cost.CostMeter`, validates the outcome, repairs a policy that
misses the budget, and records achieved cost, search cost and provenance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mpqbench.cost import ArchCost, CostMeter, budget_bitops_g, summarize
from mpqbench.data import dataset_info, load_split, subset
from mpqbench.errors import UserError
from mpqbench.models import get_model, searchable_layer_names
from mpqbench.policy import Achieved, Budget, Candidates, LayerBits, Policy, SearchInfo
from mpqbench.records import provenance
from mpqbench.runs import FIXED_BITS, SearchRequest
from mpqbench.search import SearchContext, get_method
from mpqbench.search.repair import check_feasible, repair_to_budget
from mpqbench.utils import file_sha256, json_sha256, resolve_device, seed_everything


def parse_hparams(method_cls, overrides: dict[str, Any]):
    try:
        return method_cls.Hparams(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        known = ", ".join(method_cls.Hparams.model_fields)
        raise UserError(f"bad hyper-parameter '{where}' for {method_cls.name}: {err['msg']}; known: {known or 'none'}") from None


def target_geometry(arch: str, target: str, *, input_size: int | None, width: float, data_root: str | None):
    """The deployed model's cost table (:class:`~mpqbench.cost.ArchCost`) and input size."""
    info = dataset_info(target, root=data_root)
    size = input_size or info.native_size
    model = get_model(arch, num_classes=info.num_classes, in_channels=info.in_channels, input_size=size, width=width)
    return ArchCost.from_model(model, input_size=size, in_channels=info.in_channels), size


def run_search(req: SearchRequest, out: Path) -> Policy:
    from mpqbench.config import check_label

    if not 0 <= req.budget_floor <= 1:
        raise UserError(f"--budget-floor {req.budget_floor} must be within [0, 1] (0.9 = spend at least 90 % of the budget)")
    if req.precision not in ("fp32", "bf16"):
        raise UserError(f"--precision {req.precision!r} is unknown; use fp32 or bf16")
    if req.length is not None and not req.length > 0:
        raise UserError(f"--length {req.length} must be > 0 (a multiple of the suite's default search length)")
    for what, value in (("--label", req.label), ("--proxy-label", req.proxy_label), ("--curve", req.curve)):
        if value is not None:
            check_label(value, what)
    method_cls = get_method(req.method)
    # --epochs/--batch-size are shorthands for the hyper-parameters of methods that have them, so one
    # command line serves every method (a control has neither); an explicit --hp wins.
    hparams = dict(req.hparams)
    for key in ("epochs", "batch_size"):
        value = getattr(req, key)
        if value is not None and key in method_cls.Hparams.model_fields:
            hparams.setdefault(key, value)
    hp = parse_hparams(method_cls, hparams)
    if method_cls.needs_teacher and req.teacher is None:
        raise UserError(f"method {req.method} needs an FP teacher pretrained on the proxy; pass --teacher FP.pt "
                        f"(make one with `mpqbench pretrain --dataset {req.proxy} ...`)")
    if method_cls.searches_on_target and req.proxy != req.target:
        raise UserError(f"method {req.method} searches on the target itself; pass --proxy {req.target}")
    device = resolve_device(req.device)

    tgt_cost, tgt_size = target_geometry(req.arch, req.target, input_size=req.target_input_size,
                                  width=req.width, data_root=req.data_root)
    tgt_macs, searchable, fixed = tgt_cost.macs, list(tgt_cost.searchable), list(tgt_cost.fixed)
    bitops_budget = budget_bitops_g(req.budget, tgt_macs, searchable)
    check_feasible(searchable, tgt_macs, bitops_budget, req.w_candidates, req.a_candidates, req.budget)

    pinfo = dataset_info(req.proxy, root=req.data_root)
    p_size = req.proxy_input_size or pinfo.native_size
    proxy_model = get_model(req.arch, num_classes=pinfo.num_classes, in_channels=pinfo.in_channels, input_size=p_size, width=req.width)
    if searchable_layer_names(proxy_model) != searchable:
        raise UserError(f"{req.arch} has different searchable layers at proxy size {p_size} and the target size; "
                        "a policy cannot transfer — use the same arch family for both")
    proxy_train = load_split(req.proxy, "train", root=req.data_root, input_size=p_size)
    if req.proxy_subset:
        proxy_train = subset(proxy_train, count=req.proxy_subset, seed=req.seed)
    proxy_label = req.proxy_label or (f"{req.proxy}-subset" if req.proxy_subset else req.proxy)

    meter = CostMeter(device)
    # everything that determines the result: a search resumes only from a checkpoint of the same search
    state_key = json_sha256({
        "method": req.method, "label": req.label, "hparams": hp.model_dump(mode="json"), "arch": req.arch,
        "budget": req.budget, "seed": req.seed, "proxy": req.proxy, "proxy_subset": req.proxy_subset,
        "proxy_input_size": p_size, "target": req.target, "target_input_size": tgt_size, "width": req.width,
        "w": sorted(req.w_candidates), "a": sorted(req.a_candidates), "budget_floor": req.budget_floor,
        "precision": req.precision, "teacher": file_sha256(req.teacher) if req.teacher else None,
        "data_root": req.data_root,
    })
    ctx = SearchContext(
        arch=req.arch, proxy=proxy_label, proxy_train=proxy_train, num_classes=pinfo.num_classes,
        in_channels=pinfo.in_channels, input_size=p_size, width=req.width, target_macs=tgt_macs,
        searchable=searchable, fixed=fixed, budget_name=req.budget, budget_bitops_g=bitops_budget,
        w_candidates=sorted(req.w_candidates), a_candidates=sorted(req.a_candidates), seed=req.seed,
        device=device, meter=meter, teacher_ckpt=Path(req.teacher) if req.teacher else None, progress=req.progress,
        work_dir=Path(req.work_dir) if req.work_dir else None, state_key=state_key, proxy_dataset=req.proxy,
        budget_floor=req.budget_floor, precision=req.precision,
    )
    from mpqbench.train import tune_malloc

    tune_malloc()  # reuse freed heap memory across steps (fewer page faults; numerics unchanged)
    seed_everything(req.seed)
    t0 = time.perf_counter()
    outcome = method_cls().search(ctx, hp)
    wall_s = time.perf_counter() - t0
    teacher_cost = {"teacher_wall_s": 0.0, "teacher_macs": 0.0}
    # what training the FP *proxy* teacher cost, from the checkpoint the method read. A method that searches on the
    # target FP start model (teacher_from "target": hawq-target, methods that start from the target-trained model)
    # reads the model every fine-tune shares: no extra cost of its own.
    if method_cls.needs_teacher and method_cls.teacher_from == "proxy":
        if ctx.teacher_meta is None:  # a method that needs the teacher but did not load it
            ctx.load_teacher()
        tmeta = ctx.teacher_meta
        teacher_cost = {"teacher_wall_s": float(tmeta.get("wall_s", 0.0)),
                        "teacher_macs": float(tmeta.get("macs_processed", 0.0))}

    if set(outcome.layers) != set(searchable):
        raise RuntimeError(f"method {req.method} returned layers that do not match the searchable set")
    for name, (w, a) in outcome.layers.items():
        if w not in ctx.w_candidates or a not in ctx.a_candidates:
            raise RuntimeError(f"method {req.method} chose W{w}A{a} for {name}, outside the candidates")
    layers, repaired_now = repair_to_budget(outcome.layers, tgt_macs, bitops_budget, ctx.w_candidates, ctx.a_candidates)
    layers = {n: layers[n] for n in searchable}
    fixed_bits = {n: FIXED_BITS for n in fixed}
    s = summarize(tgt_cost, layers, fixed_bits)
    cost = meter.to_dict()
    policy = Policy(
        arch=req.arch, method=req.label or req.method,
        budget=Budget(name=req.budget, bitops_g=bitops_budget),
        layers={n: LayerBits(w=w, a=a) for n, (w, a) in layers.items()},
        fixed={n: LayerBits(w=w, a=a) for n, (w, a) in fixed_bits.items()},
        candidates=Candidates(w=ctx.w_candidates, a=ctx.a_candidates),
        achieved=Achieved(bitops_g_all=s.bitops_g_all, bitops_g_searchable=s.bitops_g_searchable,
                          size_mb=s.size_mb, avg_w_bits=s.avg_w_bits, avg_a_bits=s.avg_a_bits,
                          budget_used=s.bitops_g_searchable / bitops_budget),
        search=SearchInfo(proxy=proxy_label, seed=req.seed, epochs=outcome.epochs, proxy_dataset=req.proxy,
                          proxy_subset=req.proxy_subset, proxy_input_size=p_size, target_input_size=tgt_size,
                          width=req.width,
                          hparams={"method": req.method, **hp.model_dump(mode="json")},
                          wall_s=max(wall_s, cost["wall_s"]), macs_processed=cost["macs_processed"],
                          gpu_hours=cost["gpu_hours"], device=cost["device"], steps=cost["steps"],
                          repaired=outcome.repaired or repaired_now, settled_step=outcome.settled_step,
                          settled_macs=outcome.settled_macs, budget_floor=req.budget_floor,
                          extraction=outcome.extraction, length=req.length, curve=req.curve,
                          precision=req.precision, role=req.role or method_cls.role, entropy=outcome.entropy, trace=outcome.trace, **teacher_cost),
        provenance={**provenance(device), "search_extra": {k: v for k, v in outcome.extra.items() if k != "history"},
                    "history": outcome.extra.get("history", [])},
    )
    policy.save(out)
    return policy
