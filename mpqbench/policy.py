"""The bit-width policy: a per-layer (w, a) assignment, its JSON form, validation and transfer.

A policy names searchable layers by module path (``layer1.0.conv1``); the stem conv and the classifier
are listed separately under ``fixed`` (W8A8 by default). The JSON form (schema_version 1) is the
:class:`Policy` model below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mpqbench.errors import UserError
from mpqbench.runs import DEFAULT_CANDIDATES, Role
from mpqbench.utils import write_json

if TYPE_CHECKING:  # torch is not needed to read, write or check a policy file
    from torch import nn

SCHEMA_VERSION = 1


class LayerBits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    w: int = Field(ge=1, le=32)
    a: int = Field(ge=1, le=32)


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    bitops_g: float = Field(ge=0)


class Achieved(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bitops_g_all: float
    bitops_g_searchable: float
    size_mb: float
    avg_w_bits: float
    avg_a_bits: float
    # searchable BitOPs / the budget's (1.0 = at the budget); None in policies written before it existed
    budget_used: float | None = None


class Candidates(BaseModel):
    model_config = ConfigDict(extra="forbid")
    w: list[int] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    a: list[int] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES))


class SearchInfo(BaseModel):
    """How the policy was found and what finding it cost (``macs_processed`` is hardware independent)."""

    model_config = ConfigDict(extra="forbid")
    proxy: str
    seed: int
    proxy_dataset: str | None = None
    proxy_subset: int | None = None  # images of the proxy's train split the search saw (None: all)
    proxy_input_size: int | None = None  # the proxy images' side in pixels (None: not recorded)
    target_input_size: int | None = None  # the deployed model's input side, on which BitOPs are counted
    width: float | None = None  # the arch's channel-width multiplier
    epochs: float = 0
    hparams: dict[str, Any] = Field(default_factory=dict)
    wall_s: float = 0.0
    macs_processed: float = 0.0
    gpu_hours: float = 0.0
    device: str = ""
    repaired: bool = False
    steps: int = 0
    # the FP teacher pretrained on the proxy that the method needs before it can search (GMPQ, HAWQ):
    # its training cost, read from the teacher checkpoint; 0 for methods without one. One teacher serves
    # every budget and seed of its (arch, proxy), so it is reported beside the search cost, not inside it.
    teacher_wall_s: float = 0.0
    teacher_macs: float = 0.0
    # iterative searches: the step and MACs processed by the time the argmax policy reached its final value
    # (checked at every quarter epoch; a retrospective convergence measure); None for one-shot methods
    settled_step: int | None = None
    settled_macs: float | None = None
    # the budget window [budget_floor, 1] × budget the search aimed at (the suite's setting; 0.9 by default)
    budget_floor: float | None = None
    # how a method with per-layer preferences turned them into this policy: "ilp" (budget-matched, the
    # default), "argmax" (as published), "uniform-p" (control); None for methods without such a step
    extraction: str | None = None
    # the search length as a multiple of the suite's default, and the label of the length-1 entry whose
    # accuracy-vs-search-cost curve this run belongs to (None: a run at the default length, not on a curve)
    length: float | None = None
    curve: str | None = None
    # numeric precision of the search's forward passes ("fp32" or "bf16")
    precision: str | None = None
    # the entry's role on the leaderboard: the method class's, or the suite entry's ("ablation"); None in
    # records written before roles were recorded (the leaderboard then asks the registry)
    role: Role | None = None
    # per layer {"w": nats, "a": nats}: entropy of the method's final bit distributions (None: no distributions)
    entropy: dict[str, dict[str, float]] | None = None
    # per quarter epoch {"step", "macs", "loss", "bitops_ratio"} and, for ASGA, {"rho", "gap", "grad_norm"}
    trace: list[dict[str, Any]] | None = None


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    arch: str
    method: str
    budget: Budget
    layers: dict[str, LayerBits]
    fixed: dict[str, LayerBits] = Field(default_factory=dict)
    candidates: Candidates = Field(default_factory=Candidates)
    achieved: Achieved | None = None
    search: SearchInfo | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    # ---- views -------------------------------------------------------------------------------------
    def bits(self, *, include_fixed: bool = True) -> dict[str, tuple[int, int]]:
        """``{layer name: (w_bits, a_bits)}``, fixed layers included unless asked otherwise."""
        out = {n: (b.w, b.a) for n, b in self.layers.items()}
        if include_fixed:
            out.update({n: (b.w, b.a) for n, b in self.fixed.items()})
        return out

    # ---- I/O -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"policy file {path} does not exist; create it with `mpqbench search ... --out {path}`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"policy file {path} is not valid JSON ({exc}); regenerate it with `mpqbench search`") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "policy") -> "Policy":
        if not isinstance(data, dict):
            raise UserError(f"{source} is not a policy object; regenerate it with `mpqbench search`")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise UserError(f"{source} has schema_version {version}, this mpqbench reads {SCHEMA_VERSION}; regenerate it")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise UserError(f"{source} is malformed at '{where}': {err['msg']}; regenerate it with `mpqbench search`") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    # ---- validation against a model --------------------------------------------------------------------
    def validate_for(self, model: nn.Module, *, check_candidates: bool = True) -> None:
        """Raise :class:`UserError` unless the policy names exactly the model's searchable and fixed layers."""
        from mpqbench.models import fixed_layer_names, searchable_layer_names

        searchable = searchable_layer_names(model)
        missing = [n for n in searchable if n not in self.layers]
        unknown = [n for n in self.layers if n not in searchable]
        if unknown:
            raise UserError(
                f"policy for {self.arch} names layers the model does not have as searchable: "
                f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}; was it searched for another arch?"
            )
        if missing:
            raise UserError(
                f"policy for {self.arch} lacks searchable layers {', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}; search it again for this arch"
            )
        fixed_names = set(fixed_layer_names(model))
        bad_fixed = [n for n in self.fixed if n not in fixed_names]
        if bad_fixed:
            raise UserError(f"policy fixes layers {', '.join(bad_fixed)} which are not the stem/classifier of {self.arch}")
        if check_candidates:
            for name, b in self.layers.items():
                if b.w not in self.candidates.w or b.a not in self.candidates.a:
                    raise UserError(
                        f"layer {name} has W{b.w}A{b.a}, outside the candidates w{self.candidates.w} "
                        f"a{self.candidates.a}; fix the policy or widen --w-candidates/--a-candidates"
                    )
