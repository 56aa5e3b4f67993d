"""HAQ (Wang, Liu, Lin, Lin and Han, *HAQ: Hardware-Aware Automated Quantization with Mixed Precision*,
CVPR 2019; code ``mit-han-lab/haq``): a DDPG agent walks the searchable layers and picks weight and activation
bits; the cost table is BitOPs; the reward is the accuracy after a short fine-tune. The whole baseline is this
file; docs/methods.md ("HAQ") has the equations, every default and deviation, and the measured cost.

**Episode.** Per searchable layer k the agent takes a weight step, then an activation step, observing the
paper's O = (k, c_in, c_out, s_kernel, s_stride, s_feat, n_params, i_dw, i_w/a, a_prev) (first eight min-max
normalised over the layers). An action a ∈ [0, 1] is the candidate of index min(K − 1, ⌊a·K⌋) (K equal bins).

**Budget (HAQ's action wall).** While the policy's BitOPs (target geometry, in place of the paper's latency
table) exceed the budget, layers are lowered from the last to the first, activation bits then weight bits, one
candidate step each, until it fits.

**Reward.** The policy is applied to a copy of the start model (the target FP model, ``teacher_from =
"target"``), calibrated on one batch, fine-tuned ``finetune_epochs`` on one proxy split and validated on a
disjoint one (``mpqbench.data.train_val_split``); reward = 0.1 · (acc − acc_original).

**Agent (DDPG, as the reference code).** Actor and critic MLPs with two hidden layers of 300, Adam (1e-4 /
1e-3), soft target updates τ = 0.01, replay buffer, moving-average reward baseline, ``warmup`` random
episodes, then truncated-normal exploration with σ = 0.5·0.99^(episode − warmup). The best policy is kept.

**Ours.** ``episodes`` 200 instead of 600 (the suites' search slot); the best policy, when below the budget
window's floor, is moved into the window by the shared exact ILP with the fewest candidate steps (ties towards
the agent's raw action); with an FP model of another dataset than the proxy, ``head="auto"`` gives it a fresh
classifier adapted for ``adapt_epochs`` on the fine-tune split before the search (metered).

**Cost.** Every network pass is metered (kinds ``adapt``, ``validate``, ``calibrate``, ``finetune``) and so
are the agent's updates (``agent``). ``iterative = True``: the settle point is the episode where the final best
policy was found. The search state is checkpointed every ``checkpoint_every`` episodes and resumed.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import truncnorm
from torch import nn
from tqdm.auto import tqdm

from mpqbench.data import make_loader, subset, train_val_split
from mpqbench.errors import UserError
from mpqbench.quant import frozen_weights, quantize_model
from mpqbench.runs import FIXED_BITS
from mpqbench.search import Method, SearchContext, SearchOutcome, register_method, settle_point
from mpqbench.search.extract import window_ilp
from mpqbench.train import autocast_for, cosine_factor, default_param_groups

N_STATIC = 8  # k, c_in, c_out, s_kernel, s_stride, s_feat, n_params, i_dw
N_STATE = N_STATIC + 2  # + i_w/a, a_prev


# ---- actions, state, budget wall, reward ----------------------------------------------------------------
def action_to_index(action: float, n_candidates: int) -> int:
    """Index into the sorted candidates of a continuous action in [0, 1]: K equal bins, min(K − 1, ⌊a·K⌋).

    The paper's round(b_min − 0.5 + a·(b_max − b_min + 1)) over candidate indices: 0 → the lowest candidate,
    1 → the highest, monotone in a. Actions outside [0, 1] are clipped."""
    if n_candidates < 1:
        raise ValueError("no candidates")
    a = min(max(float(action), 0.0), 1.0)
    return min(n_candidates - 1, int(math.floor(a * n_candidates)))


def layer_features(model: nn.Module, names: Sequence[str], *, input_size: int, in_channels: int) -> np.ndarray:
    """Raw static features [L, 7] per named layer: (c_in, c_out, s_kernel, s_stride, s_feat, n_params, i_dw).

    s_feat = H·W of the layer's input, from one batch-1 forward of a copy of ``model`` in eval mode (a
    geometry probe; nothing of ``model`` changes). Linear layers: (in, out, 1, 0, 1, n_params, 0)."""
    probe = copy.deepcopy(model).eval()
    modules = dict(probe.named_modules())
    feat: dict[str, int] = {}
    handles = []
    for name in names:
        m = modules.get(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise UserError(f"HAQ: layer {name!r} is not a Conv2d/Linear of this model")
        handles.append(m.register_forward_hook(
            lambda mod, inp, _out, name=name: feat.__setitem__(name, int(inp[0].shape[-2] * inp[0].shape[-1])
                                                               if inp[0].ndim == 4 else 1)))
    param = next(probe.parameters())
    try:
        with torch.no_grad():
            probe(torch.zeros(1, in_channels, input_size, input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name in names:
        m = modules[name]
        if isinstance(m, nn.Conv2d):
            dw = int(m.groups > 1 and m.groups == m.in_channels)
            rows.append([m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], feat[name],
                         m.weight.numel(), dw])
        else:
            rows.append([m.in_features, m.out_features, 1, 0, 1, m.weight.numel(), 0])
    return np.asarray(rows, dtype=np.float64)


def static_embedding(raw: np.ndarray) -> np.ndarray:
    """[L, 8] = (k, c_in, c_out, s_kernel, s_stride, s_feat, n_params, i_dw), each column min-max normalised
    over the layers to [0, 1]; a constant column (no information) becomes 0."""
    raw = np.asarray(raw, dtype=np.float64)
    table = np.column_stack([np.arange(len(raw), dtype=np.float64), raw])
    lo, hi = table.min(axis=0), table.max(axis=0)
    span = hi - lo
    return np.where(span > 0, (table - lo) / np.where(span > 0, span, 1.0), 0.0)


def observation(static_row: np.ndarray, weight_step: bool, prev: float) -> np.ndarray:
    """The step's state: the layer's static features, i_w/a (1 = weight step) and a_prev."""
    return np.concatenate([static_row, [1.0 if weight_step else 0.0, float(prev)]]).astype(np.float32)


def enforce_budget(choice: Sequence[Sequence[int]], macs: Sequence[int], w_candidates: Sequence[int],
                   a_candidates: Sequence[int], budget_bitops_g: float) -> list[tuple[int, int]]:
    """HAQ's action wall on candidate indices ``choice`` [L] of (i_w, i_a): while Σ MACs·w·a exceeds the budget
    and some index is above 0, visit the layers from the last to the first, lowering each one's activation
    and then its weight index by one, and stop as soon as the policy fits. Returns the enforced indices."""
    idx = [[int(i), int(j)] for i, j in choice]
    ws, as_ = list(w_candidates), list(a_candidates)
    limit = budget_bitops_g * 1e9 * (1 + 1e-9)
    total = sum(m * ws[i] * as_[j] for m, (i, j) in zip(macs, idx))
    lowest = sum(m * ws[0] * as_[0] for m in macs)
    while total > limit and total > lowest:
        for k in reversed(range(len(idx))):
            for side in (1, 0):  # activations first, then weights (the reference's order)
                if idx[k][side] > 0:
                    before = macs[k] * ws[idx[k][0]] * as_[idx[k][1]]
                    idx[k][side] -= 1
                    total += macs[k] * ws[idx[k][0]] * as_[idx[k][1]] - before
                if total <= limit:
                    return [(i, j) for i, j in idx]
    return [(i, j) for i, j in idx]


def haq_reward(acc: float, acc_original: float, scale: float = 0.1) -> float:
    """R = λ · (acc − acc_original), accuracies in percent (λ = 0.1 in the paper and code)."""
    return scale * (acc - acc_original)


def fill_to_window(enforced: Sequence[tuple[int, int]], raw_actions: np.ndarray, names: Sequence[str],
                   macs: dict[str, int], w_candidates: Sequence[int], a_candidates: Sequence[int],
                   budget_bitops_g: float, floor: float) -> dict[str, tuple[int, int]]:
    """The in-window policy nearest to the enforced best one (see the module docstring); unchanged if inside."""
    ws, as_ = list(w_candidates), list(a_candidates)
    layers = {n: (ws[i], as_[j]) for n, (i, j) in zip(names, enforced)}
    used = sum(macs[n] * w * a for n, (w, a) in layers.items()) / 1e9
    if floor * budget_bitops_g * (1 - 1e-9) <= used <= budget_bitops_g * (1 + 1e-9):
        return layers
    kw, ka = len(ws), len(as_)
    # each side's distance is at most K, so the tie terms of all layers sum to less than one candidate step
    tie = 1.0 / (1.0 + len(names) * (kw + ka))
    costs = {}
    for n, (ei, ej), (aw, aa) in zip(names, enforced, raw_actions):
        costs[n] = {(ws[i], as_[j]): abs(i - ei) + abs(j - ej)
                    + tie * (abs(i + 0.5 - aw * kw) + abs(j + 0.5 - aa * ka))
                    for i in range(kw) for j in range(ka)}
    return window_ilp(costs, macs, budget_bitops_g, floor)


def policy_code(layers: dict[str, tuple[int, int]], names: Sequence[str]) -> str:
    return ",".join(f"{layers[n][0]}{layers[n][1]}" for n in names)


# ---- DDPG ---------------------------------------------------------------------------------------------------
class Actor(nn.Module):
    def __init__(self, n_states: int, hidden1: int, hidden2: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_states, hidden1), nn.ReLU(), nn.Linear(hidden1, hidden2), nn.ReLU(),
                                 nn.Linear(hidden2, 1), nn.Sigmoid())

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


class Critic(nn.Module):
    def __init__(self, n_states: int, hidden1: int, hidden2: int) -> None:
        super().__init__()
        self.fc_s = nn.Linear(n_states, hidden1)
        self.fc_a = nn.Linear(1, hidden1)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden1, hidden2), nn.ReLU(), nn.Linear(hidden2, 1))

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_s(s) + self.fc_a(a))


@dataclass
class Batch:
    s: torch.Tensor
    a: torch.Tensor
    r: torch.Tensor
    s2: torch.Tensor
    done: torch.Tensor


class ReplayBuffer:
    """Ring buffer of (s, a, r, s', done); uniform sampling (with replacement only while it holds fewer
    transitions than a batch)."""

    def __init__(self, capacity: int, n_states: int) -> None:
        self.capacity = capacity
        self.s = np.zeros((capacity, n_states), np.float32)
        self.a = np.zeros((capacity, 1), np.float32)
        self.r = np.zeros((capacity, 1), np.float32)
        self.s2 = np.zeros((capacity, n_states), np.float32)
        self.done = np.zeros((capacity, 1), np.float32)
        self.size = self.pos = 0

    def push(self, s, a, r, s2, done) -> None:
        i = self.pos
        self.s[i], self.a[i, 0], self.r[i, 0], self.s2[i], self.done[i, 0] = s, a, r, s2, float(done)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        idx = rng.choice(self.size, size=n, replace=self.size < n)
        t = torch.from_numpy
        return Batch(t(self.s[idx]), t(self.a[idx]), t(self.r[idx]), t(self.s2[idx]), t(self.done[idx]))

    def state_dict(self) -> dict[str, Any]:
        return {"s": torch.from_numpy(self.s.copy()), "a": torch.from_numpy(self.a.copy()),
                "r": torch.from_numpy(self.r.copy()), "s2": torch.from_numpy(self.s2.copy()),
                "done": torch.from_numpy(self.done.copy()), "size": self.size, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("s", "a", "r", "s2", "done"):
            getattr(self, key)[...] = state[key].numpy()
        self.size, self.pos = int(state["size"]), int(state["pos"])


class DDPG:
    """The reference code's DDPG agent (one action per step), on the CPU."""

    def __init__(self, n_states: int, *, hidden1: int, hidden2: int, lr_actor: float, lr_critic: float, tau: float,
                 discount: float, capacity: int, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):  # the agent's init must not move the caller's RNG
            torch.manual_seed(seed)
            self.actor = Actor(n_states, hidden1, hidden2)
            self.critic = Critic(n_states, hidden1, hidden2)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.tau, self.discount = tau, discount
        self.memory = ReplayBuffer(capacity, n_states)
        self.baseline: float | None = None  # moving average of the sampled batches' mean reward
        self.baseline_alpha = 0.5

    def act(self, state: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.actor(torch.from_numpy(np.asarray(state, np.float32))[None])[0, 0])

    def td_targets(self, batch: Batch, baseline: float) -> torch.Tensor:
        """y = (r − B) + γ·(1 − done)·Q'(s', μ'(s'))."""
        with torch.no_grad():
            q_next = self.critic_target(batch.s2, self.actor_target(batch.s2))
        return (batch.r - baseline) + self.discount * (1.0 - batch.done) * q_next

    def update(self, batch: Batch) -> tuple[float, float]:
        """One critic step towards the TD targets, one actor step up the critic, soft target updates;
        returns (critic MSE before the step, actor loss)."""
        mean_r = float(batch.r.mean())
        b = self.baseline
        self.baseline = mean_r if b is None else b + self.baseline_alpha * (mean_r - b)
        y = self.td_targets(batch, self.baseline)
        value_loss = F.mse_loss(self.critic(batch.s, batch.a), y)
        self.critic_optim.zero_grad(set_to_none=True)
        value_loss.backward()
        self.critic_optim.step()
        policy_loss = -self.critic(batch.s, self.actor(batch.s)).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.actor_optim.step()
        with torch.no_grad():
            for target, source in ((self.actor_target, self.actor), (self.critic_target, self.critic)):
                for pt, ps in zip(target.parameters(), source.parameters()):
                    pt.mul_(1.0 - self.tau).add_(ps, alpha=self.tau)
        return float(value_loss.detach()), float(policy_loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict(),
                "memory": self.memory.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("actor", "critic", "actor_target", "critic_target", "actor_optim", "critic_optim"):
            getattr(self, key).load_state_dict(state[key])
        self.memory.load_state_dict(state["memory"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])


def explore(mu: float, sigma: float, rng: np.random.Generator) -> float:
    """A sample of the normal N(mu, sigma²) truncated to [0, 1] (the reference's exploration noise)."""
    if sigma <= 0:
        return min(max(mu, 0.0), 1.0)
    lo, hi = (0.0 - mu) / sigma, (1.0 - mu) / sigma
    return float(np.clip(truncnorm.rvs(lo, hi, loc=mu, scale=sigma, random_state=rng), 0.0, 1.0))


# ---- the environment: fine-tune and validate a policy on the proxy ------------------------------------------
def _cycle(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:  # each pass is a new epoch of the seeded loader
        yield from loader


def proxy_accuracy(model: nn.Module, ds, ctx: SearchContext, batch_size: int) -> float:
    """Top-1 (percent) on ``ds``, every batch metered as a ``validate`` step."""
    was_training = model.training
    model.eval()
    hits = 0
    try:
        with torch.no_grad(), frozen_weights(model):
            for x, y in make_loader(ds, batch_size=batch_size, shuffle=False, seed=0):
                x, y = x.to(ctx.device), y.to(ctx.device)
                with ctx.meter.step(batch_size=x.shape[0], kind="validate"):
                    with autocast_for(ctx.device, ctx.precision):
                        logits = model(x)
                    hits += int((logits.float().argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return 100.0 * hits / len(ds)


def train_steps(model: nn.Module, batches: Iterator, steps: int, opt: torch.optim.Optimizer, ctx: SearchContext,
                kind: str, lr: float, cosine: bool = False) -> float:
    """``steps`` SGD steps (metered as ``kind``); returns the last loss."""
    model.train()
    loss = torch.zeros(())
    for step in range(steps):
        x, y = next(batches)
        x, y = x.to(ctx.device), y.to(ctx.device)
        if cosine:
            for g in opt.param_groups:
                g["lr"] = lr * cosine_factor(step, steps)
        with ctx.meter.step(batch_size=x.shape[0], kind=kind):
            opt.zero_grad(set_to_none=True)
            with autocast_for(ctx.device, ctx.precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            opt.step()
    return float(loss.detach())


# ---- the method ---------------------------------------------------------------------------------------------
class HaqHparams(BaseModel):
    """Defaults: the reference code's (``rl_quantize.py``, ``linear_quantize_env.py``) unless marked ours."""

    model_config = ConfigDict(extra="forbid")
    episodes: int = Field(200, ge=1, description="search episodes (ours: 200 fits a suite's 30-min search on one "
                          "core; the reference's train_episode is 600)")
    warmup: int = Field(20, ge=0, description="episodes with uniformly random actions before the agent acts")
    hidden1: int = Field(300, ge=1, description="units of the actor's and critic's first hidden layer")
    hidden2: int = Field(300, ge=1, description="units of the second hidden layer")
    lr_actor: float = Field(1e-4, gt=0)
    lr_critic: float = Field(1e-3, gt=0)
    tau: float = Field(0.01, gt=0, le=1, description="soft update rate of the target networks")
    discount: float = Field(1.0, ge=0, le=1)
    agent_batch: int = Field(64, ge=1, description="transitions per DDPG update")
    rmsize: int = Field(128, ge=1, description="replay buffer size per searchable layer")
    init_delta: float = Field(0.5, ge=0, description="σ of the truncated-normal exploration noise after warm-up")
    delta_decay: float = Field(0.99, gt=0, le=1, description="σ factor per episode")
    reward_scale: float = Field(0.1, gt=0, description="λ of R = λ·(acc − acc_original)")
    finetune_epochs: float = Field(1.0, gt=0, description="QAT epochs over the fine-tune split per episode")
    finetune_lr: float = Field(1e-3, gt=0)
    finetune_momentum: float = Field(0.9, ge=0)
    finetune_weight_decay: float = Field(4e-5, ge=0)
    batch_size: int = Field(256, ge=1, description="images per fine-tune and validation batch")
    val_fraction: float = Field(1 / 3, gt=0, lt=1, description="share of the proxy in the validation split")
    train_size: int | None = Field(20000, ge=1, description="at most this many fine-tune images (None: all)")
    val_size: int | None = Field(10000, ge=1, description="at most this many validation images (None: all)")
    head: Literal["auto", "keep", "new"] = Field(
        "auto", description="ours: auto = keep the FP classifier when the FP model was trained on the proxy "
        "dataset, else a fresh one plus adapt_epochs of FP fine-tuning on the fine-tune split")
    adapt_epochs: float = Field(10.0, ge=0, description="ours: FP epochs on the fine-tune split with a new head")
    adapt_lr: float = Field(0.05, gt=0, description="ours: lr of that FP adaptation (SGD, cosine)")
    checkpoint_every: int = Field(10, ge=1, description="ours: episodes between search checkpoints")


@register_method("haq")
class Haq(Method):
    """DDPG over layers (weight and activation actions), BitOPs cost table, accuracy reward after a short
    fine-tune on a proxy split; best policy moved into the budget window by the shared ILP."""

    Hparams = HaqHparams
    needs_teacher = True
    teacher_from = "target"
    iterative = True  # settle point: the episode from which the best policy no longer changed
    smoke_hparams = {"episodes": 4, "warmup": 2, "hidden1": 32, "hidden2": 32, "agent_batch": 16,
                     "finetune_epochs": 0.5, "batch_size": 64}

    # ---- pieces -----------------------------------------------------------------------------------------
    @staticmethod
    def splits(ctx: SearchContext, hp: HaqHparams):
        """(fine-tune split, validation split): disjoint, class-stratified, seeded by the search seed."""
        train, val = train_val_split(ctx.proxy_train, hp.val_fraction, seed=ctx.seed)
        if hp.train_size is not None and len(train) > hp.train_size:
            train = subset(train, count=hp.train_size, seed=ctx.seed)
        if hp.val_size is not None and len(val) > hp.val_size:
            val = subset(val, count=hp.val_size, seed=ctx.seed + 1)
        return train, val

    @staticmethod
    def start_model(ctx: SearchContext, hp: HaqHparams) -> tuple[nn.Module, bool]:
        """(the target FP model at the proxy geometry, whether its classifier is new)."""
        model = ctx.load_target_fp("HAQ FP start model")
        same_data = (ctx.teacher_meta or {}).get("dataset") == ctx.proxy_dataset
        new_head = hp.head == "new" or (hp.head == "auto" and not same_data)
        if new_head:
            model = ctx.load_target_fp("HAQ FP start model", new_head=True)
        return model, new_head

    def episode_accuracy(self, fp: nn.Module, layers: dict[str, tuple[int, int]], train_ds, val_ds,
                         ctx: SearchContext, hp: HaqHparams, episode: int) -> float:
        """Quantize a copy of ``fp`` under ``layers`` (fixed layers W8A8), calibrate, fine-tune, validate."""
        model = copy.deepcopy(fp)
        quantize_model(model, {**layers, **{n: tuple(FIXED_BITS) for n in ctx.fixed}})
        loader = make_loader(train_ds, batch_size=hp.batch_size, shuffle=True, augment=True,
                             seed=ctx.seed * 100_003 + 7919 * (episode + 1))
        steps = max(1, math.ceil(hp.finetune_epochs * len(loader)))
        batches = _cycle(loader)
        x0, y0 = next(batches)
        model.eval()  # LSQ steps from one batch, no BN-statistics update (as mpqbench.pipeline.calibrate)
        with torch.no_grad(), ctx.meter.step(batch_size=x0.shape[0], kind="calibrate"):
            model(x0.to(ctx.device))

        def first_then_rest():
            yield x0, y0
            yield from batches

        opt = torch.optim.SGD(default_param_groups(model, hp.finetune_weight_decay), lr=hp.finetune_lr,
                              momentum=hp.finetune_momentum)
        train_steps(model, first_then_rest(), steps, opt, ctx, "finetune", hp.finetune_lr)
        return proxy_accuracy(model, val_ds, ctx, hp.batch_size)

    # ---- the search ---------------------------------------------------------------------------------------
    def search(self, ctx: SearchContext, hp: HaqHparams) -> SearchOutcome:
        names = list(ctx.searchable)
        n_layers = len(names)
        ws, as_ = sorted(ctx.w_candidates), sorted(ctx.a_candidates)
        macs = [int(ctx.target_macs[n]) for n in names]
        train_ds, val_ds = self.splits(ctx, hp)
        fp, new_head = self.start_model(ctx, hp)
        static = static_embedding(layer_features(fp, names, input_size=ctx.input_size, in_channels=ctx.in_channels))
        agent = DDPG(N_STATE, hidden1=hp.hidden1, hidden2=hp.hidden2, lr_actor=hp.lr_actor, lr_critic=hp.lr_critic,
                     tau=hp.tau, discount=hp.discount, capacity=hp.rmsize * n_layers, seed=ctx.seed)
        rng = np.random.default_rng([ctx.seed, 0x484151])
        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        episode = 0
        state = ctx.resume_state()
        if state is not None:
            fp.load_state_dict(state["fp"])
            acc_original = float(state["acc_original"])
            agent.load_state_dict(state["agent"])
            rng.bit_generator.state = json.loads(state["rng"])
            history, best = json.loads(state["history"]), json.loads(state["best"])
            episode = int(state["episode"])
            ctx.meter.load_state_dict(state["meter"])
        else:
            if new_head and hp.adapt_epochs > 0:  # ours: the FP model learns the proxy's classes first
                loader = make_loader(train_ds, batch_size=hp.batch_size, shuffle=True, augment=True,
                                     seed=ctx.seed * 100_003 + 1)
                steps = max(1, math.ceil(hp.adapt_epochs * len(loader)))
                opt = torch.optim.SGD(default_param_groups(fp, 1e-4), lr=hp.adapt_lr, momentum=0.9)
                loss = train_steps(fp, _cycle(loader), steps, opt, ctx, "adapt", hp.adapt_lr, cosine=True)
                if not math.isfinite(loss):
                    raise UserError(f"HAQ's FP adaptation diverged (loss {loss}); lower --hp adapt_lr=...")
            acc_original = proxy_accuracy(fp, val_ds, ctx, hp.batch_size)
        fp.eval()

        pbar = tqdm(total=hp.episodes, initial=episode, desc=f"search {self.name}", disable=not ctx.progress,
                    leave=False)
        while episode < hp.episodes:
            sigma = hp.init_delta * hp.delta_decay ** (episode - hp.warmup) if episode >= hp.warmup else None
            states, actions, choice = [], [], []
            prev = 1.0
            for k in range(n_layers):
                picked = []
                for weight_step, cands in ((True, ws), (False, as_)):
                    s = observation(static[k], weight_step, prev)
                    a = float(rng.uniform()) if sigma is None else explore(agent.act(s), sigma, rng)
                    i = action_to_index(a, len(cands))
                    prev = cands[i] / cands[-1]
                    states.append(s)
                    actions.append(a)
                    picked.append(i)
                choice.append(picked)
            raw_bitops = sum(m * ws[i] * as_[j] for m, (i, j) in zip(macs, choice)) / 1e9
            enforced = enforce_budget(choice, macs, ws, as_, ctx.budget_bitops_g)
            layers = {n: (ws[i], as_[j]) for n, (i, j) in zip(names, enforced)}
            acc = self.episode_accuracy(fp, layers, train_ds, val_ds, ctx, hp, episode)
            reward = haq_reward(acc, acc_original, hp.reward_scale)

            losses = []
            for t in range(len(states)):  # every step of the episode carries the episode's reward
                done = t == len(states) - 1
                agent.memory.push(states[t], actions[t], reward, states[t] if done else states[t + 1], done)
                if sigma is not None:
                    with ctx.meter.step(batch_size=hp.agent_batch, kind="agent"):
                        losses.append(agent.update(agent.memory.sample(hp.agent_batch, rng)))
            if losses and not all(math.isfinite(v) for pair in losses for v in pair):
                raise UserError(f"HAQ's DDPG losses are not finite at episode {episode + 1}; lower --hp "
                                "lr_critic=... / lr_actor=...")
            if best is None or reward > best["reward"]:
                best = {"reward": reward, "acc": acc, "episode": episode + 1, "enforced": [list(p) for p in enforced],
                        "raw_actions": [actions[2 * k: 2 * k + 2] for k in range(n_layers)]}
            episode += 1
            rec = {"episode": episode, "step": ctx.meter.steps, "macs": float(ctx.meter.macs_processed),
                   "reward": reward, "acc": acc, "bitops_ratio": ctx.bitops_g(layers) / ctx.budget_bitops_g,
                   "raw_bitops_ratio": raw_bitops / ctx.budget_bitops_g, "sigma": sigma,
                   "best_reward": best["reward"],
                   "policy": policy_code({n: (ws[i], as_[j]) for n, (i, j) in zip(names, best["enforced"])}, names)}
            if losses:
                rec.update(value_loss=float(np.mean([v for v, _ in losses])),
                           policy_loss=float(np.mean([p for _, p in losses])))
            history.append(rec)
            pbar.update(1)
            if episode < hp.episodes and episode % hp.checkpoint_every == 0:
                ctx.save_state({"episode": episode, "agent": agent.state_dict(), "fp": fp.state_dict(),
                                "acc_original": acc_original, "rng": json.dumps(rng.bit_generator.state),
                                "history": json.dumps(history), "best": json.dumps(best),
                                "meter": ctx.meter.state_dict()})
        pbar.close()

        best_enforced = [tuple(p) for p in best["enforced"]]
        best_layers = {n: (ws[i], as_[j]) for n, (i, j) in zip(names, best_enforced)}
        layers = fill_to_window(best_enforced, np.asarray(best["raw_actions"]), names, ctx.target_macs, ws, as_,
                                ctx.budget_bitops_g, ctx.budget_floor)
        ctx.clear_state()
        agent_updates = 2 * n_layers * max(0, hp.episodes - hp.warmup)
        proxy_samples = ctx.meter.samples - agent_updates * hp.agent_batch  # images through the network
        settled = settle_point(history)
        changed = sum((layers[n][0] != best_layers[n][0]) + (layers[n][1] != best_layers[n][1]) for n in names)
        trace = [{k: v for k, v in h.items() if k != "policy"} for h in history]
        return SearchOutcome(
            layers=layers, epochs=proxy_samples / len(ctx.proxy_train), extraction="ilp",
            settled_step=settled[0] if settled else None, settled_macs=settled[1] if settled else None,
            trace=trace,
            extra={"history": history, "acc_original": acc_original, "best_reward": best["reward"],
                   "best_acc": best["acc"], "best_episode": best["episode"],
                   "best_policy": {n: list(b) for n, b in best_layers.items()},
                   "best_budget_used": ctx.bitops_g(best_layers) / ctx.budget_bitops_g,
                   "window_fill_changes": int(changed), "new_head": new_head, "agent_updates": agent_updates,
                   "adapt_epochs": hp.adapt_epochs if new_head else 0.0,
                   "proxy_split": {"finetune": len(train_ds), "validate": len(val_ds)},
                   "state_features": ["k", "c_in", "c_out", "s_kernel", "s_stride", "s_feat", "n_params", "i_dw",
                                      "i_w/a", "a_prev"]},
        )
