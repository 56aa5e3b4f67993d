"""Method registry and the contract every MPQ search method fulfils.

A method is a class registered with ``@register_method("name")``. It declares its hyper-parameters as a
pydantic model ``Hparams`` (defaults = the reference values of methods.md; the record keeps them) and
implements ``search(ctx, hp) -> SearchOutcome``. The harness (``mpqbench.search.run``) builds the
context, measures nothing itself — each method wraps its real step function in ``ctx.meter`` — and turns
the outcome into a policy JSON that always meets the budget.

A method class carries its own facts: ``role`` (proposed / baseline / control; a suite entry may mark a
variant of the proposed method as an ablation), ``needs_teacher``, ``searches_on_target``, ``runs_network``,
``iterative`` and ``smoke_hparams`` (the hyper-parameters of a seconds-long run, for the generic test). Suites,
the leaderboard, the app and the tests read them from here.

This module is the core's registry only: it imports no method. The built-in ones (the controls, the
differentiable search and ASGA) and every baseline are found by :func:`mpqbench.plugins.discover`, which
the top level (the CLI, the workflow, the app, the tests) calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch.utils.data import Dataset

from mpqbench.runs import DEFAULT_BUDGET_FLOOR, ROLES, Role  # noqa: F401  (ROLES re-exported)
from mpqbench.cost import CostMeter
from mpqbench.registry import Registry
from mpqbench.utils import torch_save


class NoHparams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class SearchContext:
    """Everything a method may use. The proxy data are at the proxy geometry; costs are on the target's."""

    arch: str
    proxy: str  # label of the proxy (dataset name, or e.g. "fashion-mnist-subset")
    proxy_train: Dataset
    num_classes: int
    in_channels: int
    input_size: int  # proxy input size (the supernet is built at this geometry)
    width: float
    target_macs: dict[str, int]  # per-layer MACs of the deployed (target-geometry) model
    searchable: list[str]
    fixed: list[str]
    budget_name: str
    budget_bitops_g: float  # searchable-only BitOPs of the budget on the target geometry, in 1e9
    w_candidates: list[int]
    a_candidates: list[int]
    seed: int
    device: torch.device
    meter: CostMeter
    teacher_ckpt: Path | None = None
    progress: bool = True
    work_dir: Path | None = None  # where a method may checkpoint to resume a long search
    # sha256 of everything that determines the result (method, hparams, budget, seed, data, geometry, teacher):
    # a checkpoint is resumed only when its key is this one (see :meth:`resume_state`)
    state_key: str | None = None
    proxy_dataset: str | None = None  # the registered dataset searched on (``proxy`` is its label)
    teacher_meta: dict[str, Any] | None = None  # set by load_teacher: the teacher checkpoint's meta (its cost)
    # the budget window is [budget_floor, 1] × budget: methods that can choose how much to spend aim inside it
    budget_floor: float = DEFAULT_BUDGET_FLOOR
    precision: str = "fp32"  # "bf16": the network's forward under CPU/CUDA bf16 autocast (quantizers in fp32)

    def bitops_g(self, layers: dict[str, tuple[int, int]]) -> float:
        """Searchable-only BitOPs (1e9) of a per-layer assignment on the target geometry."""
        from mpqbench.cost import bitops_g

        return bitops_g(self.target_macs, layers)

    # ---- resumable state ------------------------------------------------------------------------------
    def state_path(self) -> Path | None:
        """Where this search checkpoints (None without ``work_dir``): one file per search key."""
        if self.work_dir is None:
            return None
        return self.work_dir / f"search-{(self.state_key or 'nokey')[:16]}.ckpt"

    def resume_state(self) -> dict[str, Any] | None:
        """The checkpoint this search may resume from, or None (start clean). A checkpoint of another search
        in ``work_dir`` (another key) or one that does not load is removed with one warning line saying why:
        a resume never mixes two searches."""
        import sys

        path = self.state_path()
        if path is None:
            return None
        for other in sorted(self.work_dir.glob("search-*.ckpt")):
            if other != path:
                print(f"warning: {other} is the checkpoint of another search (other method, settings, data or "
                      "seed); removed, this search starts clean", file=sys.stderr)
                other.unlink(missing_ok=True)
        if not path.exists():
            return None
        try:
            state = torch.load(path, weights_only=True)
            if not isinstance(state, dict) or state.get("key") != self.state_key:
                raise ValueError("its key does not match this search")
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign checkpoint is discarded, never half-used
            print(f"warning: search checkpoint {path} is unusable ({type(exc).__name__}: {exc}); removed, this "
                  "search starts clean", file=sys.stderr)
            path.unlink(missing_ok=True)
            return None
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        path = self.state_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch_save({**state, "key": self.state_key}, path)

    def clear_state(self) -> None:
        path = self.state_path()
        if path is not None:
            path.unlink(missing_ok=True)

    def load_target_fp(self, what: str = "target FP model", *, new_head: bool = False) -> torch.nn.Module:
        """The target FP start model (``--teacher`` of a method with ``teacher_from = "target"``) rebuilt at the
        proxy geometry, on ``device``: same arch, width and input channels, every weight copied; the classifier
        too when the proxy has the target's classes and ``new_head`` is False, else a fresh one (seeded by the
        search seed). For methods that start from the target-trained model and see proxy data only."""
        from mpqbench.errors import UserError
        from mpqbench.models import get_model
        from mpqbench.pipeline import load_checkpoint

        if self.teacher_ckpt is None:
            raise UserError(f"this method starts from the {what}; pass --teacher <target FP checkpoint>")
        ckpt = load_checkpoint(self.teacher_ckpt, what)
        meta = self.teacher_meta = ckpt["meta"]
        want, have = (self.arch, self.in_channels, self.width), (meta["arch"], meta["in_channels"], meta["width"])
        if have != want:
            raise UserError(f"the {what} {self.teacher_ckpt} is (arch, channels, width) = {have}, the search needs "
                            f"{want}; pass the FP model this arch's fine-tunes start from")
        model = get_model(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                          input_size=self.input_size, width=self.width)
        own = model.state_dict()
        state = {k: v for k, v in ckpt["state_dict"].items() if k in own and own[k].shape == v.shape}
        head = [k for k in own if k not in state]
        if new_head or head:
            from mpqbench.models import fixed_layer_names

            prefix = fixed_layer_names(model)[1] + "."
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            missing = [k for k in own if k not in state and not k.startswith(prefix)]
            if missing:
                raise UserError(f"the {what} {self.teacher_ckpt} lacks {missing[:3]} for the proxy geometry")
            gen = torch.Generator().manual_seed(self.seed)
            with torch.no_grad():
                layer = dict(model.named_modules())[prefix[:-1]]
                torch.nn.init.normal_(layer.weight, std=0.01, generator=gen)
                torch.nn.init.zeros_(layer.bias)
        model.load_state_dict(state, strict=False)
        return model.to(self.device)

    def load_teacher(self, what: str = "FP teacher") -> torch.nn.Module:
        """The FP model pretrained on the proxy (``--teacher``), checked against this search, on ``device``."""
        from mpqbench.errors import UserError
        from mpqbench.models import get_model
        from mpqbench.pipeline import load_checkpoint

        if self.teacher_ckpt is None:
            raise UserError(f"this method needs an {what} pretrained on the proxy; pass --teacher FP.pt")
        ckpt = load_checkpoint(self.teacher_ckpt, what)
        meta = self.teacher_meta = ckpt["meta"]
        if self.proxy_dataset is not None and meta.get("dataset") not in (None, self.proxy_dataset):
            raise UserError(f"the {what} {self.teacher_ckpt} was trained on {meta.get('dataset')!r}, this search runs "
                            f"on {self.proxy_dataset!r}; pretrain one with `mpqbench pretrain --dataset "
                            f"{self.proxy_dataset} ...`")
        want = (self.arch, self.num_classes, self.in_channels, self.input_size, self.width)
        have = (meta["arch"], meta["num_classes"], meta["in_channels"], meta["input_size"], meta["width"])
        if have != want:
            raise UserError(
                f"the {what} {self.teacher_ckpt} is (arch, classes, channels, input size, width) = {have}, the "
                f"search needs {want}; pretrain it with `mpqbench pretrain --arch {self.arch} --dataset <proxy> "
                f"--input-size {self.input_size} --width {self.width}`"
            )
        model = get_model(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                          input_size=self.input_size, width=self.width)
        model.load_state_dict(ckpt["state_dict"])
        return model.to(self.device)


@dataclass
class SearchOutcome:
    layers: dict[str, tuple[int, int]]
    epochs: float
    repaired: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # iterative searches: the step and the MACs processed by the time the argmax policy reached its
    # final value (see :func:`settle_point`); None for one-shot methods
    settled_step: int | None = None
    settled_macs: float | None = None
    # how the policy was read from the method's preferences ("ilp", "argmax", "uniform-p"; None: no such step)
    extraction: str | None = None
    # per layer {"w": nats, "a": nats}: how decided the method's final distributions were (None: no distributions)
    entropy: dict[str, dict[str, float]] | None = None
    # compact per-quarter-epoch log {"step", "macs", "loss", "bitops_ratio"[, "rho", "gap", "grad_norm"]}
    trace: list[dict[str, Any]] | None = None


def settle_point(history: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(step, MACs processed) of the first history entry from which on the recorded argmax policy
    (``"policy"``) never differs from the last entry's; None without a recorded policy.

    A retrospective convergence measure of a fixed-length search: entries are the periodic snapshots
    ``{"step", "macs", "policy", ...}`` of the search loop, the last one taken at the final step.
    """
    marks = [h for h in history if "policy" in h and "macs" in h]
    if not marks:
        return None
    final, first = marks[-1]["policy"], len(marks) - 1
    while first > 0 and marks[first - 1]["policy"] == final:
        first -= 1
    return int(marks[first]["step"]), float(marks[first]["macs"])


class Method:
    """Base class: subclasses set ``Hparams`` and implement :meth:`search`."""

    name: ClassVar[str] = ""
    Hparams: ClassVar[type[BaseModel]] = NoHparams
    # proposed (ASGA and its variants), baseline (published methods), control (sanity references that choose
    # a policy without a search); "ablation" is given to suite entries, not to classes
    role: ClassVar[Role] = "baseline"
    # hyper-parameters of a seconds-long run on the smoke geometry (the generic method test; keys the class has)
    smoke_hparams: ClassVar[dict[str, Any]] = {}
    # needs an FP model (pretrained on the proxy, or the target FP model for a method that searches on the target)
    needs_teacher: ClassVar[bool] = False
    # which FP model the workflow passes as --teacher: "proxy" (pretrained on the proxy; its training is part of
    # the method's cost) or "target" (the target FP start model every fine-tune uses: methods that start from the
    # target-trained model, read with :meth:`SearchContext.load_target_fp`; no cost of its own)
    teacher_from: ClassVar[Literal["proxy", "target"]] = "proxy"
    # Searches directly on the target dataset (the expensive conventional reference).
    searches_on_target: ClassVar[bool] = False
    # False for the controls, which choose a policy without running a network (0 MACs of search cost)
    runs_network: ClassVar[bool] = True
    # True for searches that iterate over the proxy and record a settle point; False for one-shot methods
    iterative: ClassVar[bool] = True

    def search(self, ctx: SearchContext, hp: BaseModel) -> SearchOutcome:  # pragma: no cover - interface
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    """Class decorator: register ``cls`` under ``name`` (raises on a duplicate name)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def get_method(name: str) -> type[Method]:
    """The registered method class (after :func:`mpqbench.plugins.discover`); unknown → UserError."""
    return METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)
