"""HAQ (baselines/haq.py): the action discretisation, the state vector, HAQ's budget wall, the reward, one DDPG
update, the budget-window fill, and a tiny search (metering, new-head adaptation, checkpoint/resume).

- actions: K equal bins over the sorted candidates, 0 → lowest, 1 → highest, monotone;
- state: the paper's features of hand-made layers (conv, depthwise conv, linear), min-max normalised;
- the wall lowers bits from the last layer backwards, activations first, stops as soon as the policy fits
  (hand-traced example), and meets the budget for random actions;
- reward = 0.1 · (acc − acc_original);
- one DDPG update moves the critic towards its TD targets y = (r − B) + γ(1 − done)Q'(s', μ'(s'));
- the fill returns an in-window policy unchanged, else the in-window policy with the fewest candidate steps
  from the best one (checked against enumeration);
- a search counts exactly the metered steps its episodes make, and a killed search resumes to the same result.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from baselines.haq import (
    DDPG,
    Batch,
    Haq,
    HaqHparams,
    action_to_index,
    enforce_budget,
    fill_to_window,
    haq_reward,
    layer_features,
    observation,
    static_embedding,
)
from mpqbench.cost import arch_cost
from mpqbench.data import load_split, subset
from mpqbench.search import SearchContext
from mpqbench.utils import torch_save
from searchkit import tiny_context


# ---------------------------------------------------------------------------------------------- actions
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_action_maps_onto_candidates_lowest_to_highest_monotone(k):
    grid = np.linspace(0.0, 1.0, 1001)
    idx = [action_to_index(a, k) for a in grid]
    assert idx[0] == 0 and idx[-1] == k - 1
    assert all(b >= a for a, b in zip(idx, idx[1:]))
    assert set(idx) == set(range(k))  # every candidate is reachable
    # K equal bins: the share of the grid mapped to each candidate is 1/K (±1 grid point)
    counts = np.bincount(idx, minlength=k)
    assert np.all(np.abs(counts - 1001 / k) <= 1.5)


def test_action_bins_by_hand_and_clipping():
    # three candidates: [0, 1/3) → 0, [1/3, 2/3) → 1, [2/3, 1] → 2 (the paper's round(b_min − 0.5 + a·K))
    assert [action_to_index(a, 3) for a in (0.0, 0.32, 0.34, 0.66, 0.67, 0.999, 1.0)] == [0, 0, 1, 1, 2, 2, 2]
    assert action_to_index(-0.5, 3) == 0 and action_to_index(1.7, 3) == 2


# ---------------------------------------------------------------------------------------------- state
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=1, padding=1, bias=False)  # input 8×8
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)  # input 8×8 → 4×4
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.dw(self.conv(x)).flatten(1))


def test_state_features_of_hand_made_layers():
    raw = layer_features(_Tiny(), ["conv", "dw", "fc"], input_size=8, in_channels=3)
    #                     c_in c_out kernel stride s_feat n_params dw
    assert raw.tolist() == [[3, 8, 3, 1, 64, 216, 0],
                            [8, 8, 3, 2, 64, 72, 1],
                            [128, 10, 1, 0, 1, 1280, 0]]
    emb = static_embedding(raw)
    # k, c_in, c_out, s_kernel, s_stride, s_feat, n_params, i_dw — each min-max normalised over the layers
    expected = [[0.0, 0.0, 0.0, 1.0, 0.5, 1.0, 144 / 1208, 0.0],
                [0.5, 5 / 125, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0],
                [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]]
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-12)
    s = observation(emb[1], weight_step=False, prev=0.75)
    assert s.dtype == np.float32 and s.shape == (10,)
    np.testing.assert_allclose(s, expected[1] + [0.0, 0.75], atol=1e-7)
    assert observation(emb[0], True, 1.0)[-2:].tolist() == [1.0, 1.0]


def test_constant_feature_column_is_zero():
    raw = np.array([[16, 16, 3, 1, 256, 2304, 0], [16, 32, 3, 1, 64, 4608, 0]], dtype=float)
    emb = static_embedding(raw)
    assert emb[:, 0].tolist() == [0.0, 1.0]  # index
    assert emb[:, 1].tolist() == [0.0, 0.0]  # c_in constant → 0
    assert emb[:, 3].tolist() == [0.0, 0.0] and emb[:, 7].tolist() == [0.0, 0.0]
    assert emb.min() >= 0 and emb.max() <= 1


# ---------------------------------------------------------------------------------------------- budget wall
def test_wall_by_hand():
    macs, cands = [10, 20], [2, 3, 4]
    top = [(2, 2), (2, 2)]  # W4A4 everywhere: 10·16 + 20·16 = 480 BitOPs
    assert enforce_budget(top, macs, cands, cands, 480 / 1e9) == top  # fits: unchanged
    # last layer's activations 4 → 3: 160 + 240 = 400 ≤ 400, stop
    assert enforce_budget(top, macs, cands, cands, 400 / 1e9) == [(2, 2), (2, 1)]
    # ... then its weights 4 → 3 (340), then layer 0's activations 4 → 3: 120 + 180 = 300 ≤ 300, stop
    assert enforce_budget(top, macs, cands, cands, 300 / 1e9) == [(2, 1), (1, 1)]
    # second pass: 1: a 3→2 (120+120=240), 1: w 3→2 (120+80=200), 0: w 4→3 (90+80=170), 0: a 3→2 (60+80=140)...
    assert enforce_budget(top, macs, cands, cands, 150 / 1e9) == [(1, 0), (0, 0)]
    # the lowest policy is the floor of the wall: it stops there whatever the budget
    assert enforce_budget(top, macs, cands, cands, 1 / 1e9) == [(0, 0), (0, 0)]


def test_wall_meets_the_budget_for_random_actions():
    rng = np.random.default_rng(0)
    ws, as_ = [2, 3, 4, 6], [2, 4, 8]
    for _ in range(200):
        n = int(rng.integers(1, 25))
        macs = [int(m) for m in rng.integers(1, 10_000, size=n)]
        low, high = sum(macs) * 2 * 2, sum(macs) * 6 * 8
        budget = float(rng.uniform(low, high)) / 1e9
        raw = [(action_to_index(rng.uniform(), 4), action_to_index(rng.uniform(), 3)) for _ in range(n)]
        out = enforce_budget(raw, macs, ws, as_, budget)
        used = sum(m * ws[i] * as_[j] for m, (i, j) in zip(macs, out)) / 1e9
        assert used <= budget * (1 + 1e-9)
        assert all(i <= ri and j <= rj for (i, j), (ri, rj) in zip(out, raw))  # bits only go down


# ---------------------------------------------------------------------------------------------- reward
def test_reward_formula():
    assert haq_reward(72.5, 75.0) == pytest.approx(-0.25)
    assert haq_reward(80.0, 75.0, scale=0.5) == pytest.approx(2.5)
    assert haq_reward(75.0, 75.0) == 0.0


# ---------------------------------------------------------------------------------------------- DDPG
def _agent(seed=0):
    return DDPG(4, hidden1=16, hidden2=16, lr_actor=1e-4, lr_critic=1e-2, tau=0.01, discount=1.0,
                capacity=32, seed=seed)


def test_one_ddpg_update_moves_the_critic_towards_its_targets():
    agent = _agent()
    g = torch.Generator().manual_seed(3)
    batch = Batch(s=torch.rand(8, 4, generator=g), a=torch.rand(8, 1, generator=g),
                  r=torch.tensor([[1.0], [2.0], [0.5], [-1.0], [3.0], [0.0], [1.5], [-0.5]]),
                  s2=torch.rand(8, 4, generator=g), done=torch.tensor([[1.0], [0.0]] * 4))
    baseline = float(batch.r.mean())  # the first update's moving average is the batch mean
    y = agent.td_targets(batch, baseline)
    with torch.no_grad():  # the targets by hand: terminal rows r − B, the others r − B + Q'(s', μ'(s'))
        q_next = agent.critic_target(batch.s2, agent.actor_target(batch.s2))
    torch.testing.assert_close(y, batch.r - baseline + (1 - batch.done) * q_next)
    with torch.no_grad():
        before = float(((agent.critic(batch.s, batch.a) - y) ** 2).mean())
    value_loss, _ = agent.update(batch)
    assert agent.baseline == pytest.approx(baseline)
    assert value_loss == pytest.approx(before, rel=1e-6)
    with torch.no_grad():
        after = float(((agent.critic(batch.s, batch.a) - y) ** 2).mean())
    assert after < before
    # the targets moved only by τ: the target critic is 1 % of the way to the updated critic
    for pt, p0, p1 in zip(agent.critic_target.parameters(), _agent().critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(pt, 0.99 * p0 + 0.01 * p1)
    # the moving-average baseline: B ← B + ½ (mean − B)
    batch2 = Batch(batch.s, batch.a, batch.r + 2.0, batch.s2, batch.done)
    agent.update(batch2)
    assert agent.baseline == pytest.approx(baseline + 0.5 * ((baseline + 2.0) - baseline))


def test_agent_state_round_trip_and_seeded_init():
    a, b = _agent(1), _agent(1)
    assert all(torch.equal(p, q) for p, q in zip(a.actor.parameters(), b.actor.parameters()))
    rng = np.random.default_rng(0)
    for _ in range(10):
        a.memory.push(rng.random(4), rng.random(), rng.random(), rng.random(4), rng.random() < 0.2)
    a.update(a.memory.sample(4, np.random.default_rng(1)))
    c = _agent(2)
    c.load_state_dict(a.state_dict())
    s = np.full(4, 0.3, np.float32)
    assert c.act(s) == a.act(s) and c.baseline == a.baseline and c.memory.size == 10
    x, y = (m.memory.sample(4, np.random.default_rng(5)) for m in (a, c))
    assert torch.equal(x.s, y.s) and torch.equal(x.r, y.r)


# ---------------------------------------------------------------------------------------------- window fill
def test_fill_keeps_an_in_window_policy():
    names, macs, cands = ["a", "b"], {"a": 10, "b": 10}, [2, 3, 4]
    enforced = [(1, 1), (1, 1)]  # W3A3 both: exactly the w3a3 budget
    out = fill_to_window(enforced, np.zeros((2, 2)), names, macs, cands, cands, 180 / 1e9, 0.9)
    assert out == {"a": (3, 3), "b": (3, 3)}


def test_fill_moves_below_floor_policy_to_nearest_in_window_by_enumeration():
    names, cands = ["a", "b", "c"], [2, 3, 4]
    macs = {"a": 10, "b": 30, "c": 20}
    budget, floor = sum(m * 9 for m in macs.values()) / 1e9, 0.9
    enforced = [(0, 0), (0, 1), (0, 0)]  # far below the floor
    raw = np.array([[0.9, 0.95], [0.1, 0.4], [0.5, 0.2]])
    out = fill_to_window(enforced, raw, names, macs, cands, cands, budget, floor)
    used = sum(macs[n] * w * a for n, (w, a) in out.items()) / 1e9
    assert floor * budget * (1 - 1e-9) <= used <= budget * (1 + 1e-9)

    def steps(pol):
        return sum(abs(cands.index(pol[n][0]) - i) + abs(cands.index(pol[n][1]) - j)
                   for n, (i, j) in zip(names, enforced))

    def tie(pol):  # distance of the chosen candidates' bin centres from the raw actions (3 equal bins)
        return sum(abs(cands.index(pol[n][0]) + 0.5 - 3 * aw) + abs(cands.index(pol[n][1]) + 0.5 - 3 * aa)
                   for n, (aw, aa) in zip(names, raw))

    pairs = list(itertools.product(cands, cands))
    feasible = []
    for combo in itertools.product(pairs, repeat=3):
        pol = dict(zip(names, combo))
        u = sum(macs[n] * w * a for n, (w, a) in pol.items()) / 1e9
        if floor * budget <= u <= budget:
            feasible.append(pol)
    best_steps = min(steps(p) for p in feasible)
    assert steps(out) == best_steps
    assert tie(out) == pytest.approx(min(tie(p) for p in feasible if steps(p) == best_steps))


# ---------------------------------------------------------------------------------------------- a tiny search
SIZE, WIDTH = 8, 0.25


@pytest.fixture(scope="module")
def fp_models(tmp_path_factory):
    from mpqbench.pipeline import pretrain
    from mpqbench.train import TrainConfig

    folder = tmp_path_factory.mktemp("fp")
    digits = folder / "fp_digits.pt"
    pretrain(arch="resnet20", dataset="digits", data_root=None, input_size=SIZE, width=WIDTH, subset=128,
             cfg=TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=0, device="cpu"), out=digits, progress=False)
    # the same weights labelled as a model of another dataset (the search reads only the label to decide
    # on a new head; training a real Fashion-MNIST model here would cost most of this file's time)
    ckpt = torch.load(digits, weights_only=True)
    other = folder / "fp_other.pt"
    torch_save({**ckpt, "meta": {**ckpt["meta"], "dataset": "fashion-mnist"}}, other)
    return {"digits": digits, "other": other}


def _ctx(fp, work_dir=None) -> SearchContext:
    cost = arch_cost("resnet20", input_size=SIZE, num_classes=10, in_channels=1, width=WIDTH)
    ds = subset(load_split("digits", "train", input_size=SIZE), count=90, seed=0)
    budget = sum(cost.macs[n] for n in cost.searchable) * 3 * 3 / 1e9
    return tiny_context(fp, proxy_train=ds, width=WIDTH, input_size=SIZE, budget_g=budget, work_dir=work_dir,
                        state_key="k" * 64 if work_dir else None)


HP = dict(episodes=4, warmup=2, hidden1=16, hidden2=16, agent_batch=8, finetune_epochs=1.0, batch_size=32,
          adapt_epochs=1.0)


def test_search_counts_every_metered_step_and_adapts_a_new_head(fp_models):
    torch.set_num_threads(1)
    hp = HaqHparams(**HP)
    ctx = _ctx(fp_models["other"])  # FP model of another dataset: fresh head + FP adaptation
    out = Haq().search(ctx, hp)
    ex = out.extra
    assert ex["new_head"] and ex["proxy_split"] == {"finetune": 60, "validate": 30}
    # 60 fine-tune images in batches of 32 → 2 steps an epoch; 30 validation images → 1 batch.
    # adapt 2 + validate the FP model 1, then per episode: calibrate 1 + fine-tune 2 + validate 1, and after the
    # 2 warm-up episodes one agent update per step of the episode (2 × 20 layers)
    assert [h["step"] for h in ex["history"]] == [3 + 4, 3 + 8, 3 + 12 + 40, 3 + 16 + 80]
    assert ctx.meter.steps == 3 + 16 + 80 and ex["agent_updates"] == 80
    assert out.epochs == pytest.approx((ctx.meter.samples - 80 * 8) / 90)
    # images: adapt 60 (1 epoch) + FP validation 30 + per episode calibrate 32 + fine-tune 60 + validate 30
    assert out.epochs == pytest.approx((60 + 30 + 4 * (32 + 60 + 30)) / 90)
    assert ctx.meter.macs_processed > 0
    assert 0 < out.settled_step <= ctx.meter.steps
    for h in ex["history"]:  # every evaluated (enforced) policy meets the budget
        assert h["bitops_ratio"] <= 1 + 1e-9
        assert h["reward"] == pytest.approx(0.1 * (h["acc"] - ex["acc_original"]))
    assert ex["best_reward"] == max(h["reward"] for h in ex["history"])
    used = ctx.bitops_g(out.layers) / ctx.budget_bitops_g
    assert 0.9 - 1e-9 <= used <= 1 + 1e-9
    # with the proxy's own FP model the head is kept and nothing is adapted
    same = _ctx(fp_models["digits"])
    assert not Haq().search(same, HaqHparams(**{**HP, "episodes": 1, "warmup": 1})).extra["new_head"]
    assert same.meter.steps == 1 + (1 + 2 + 1)


def test_killed_search_resumes_to_the_same_result(fp_models, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    # one warm-up episode, so the checkpoint after episode 2 holds trained networks, Adam states and a used buffer
    hp = HaqHparams(**{**HP, "episodes": 3, "warmup": 1, "checkpoint_every": 1})
    whole = Haq().search(_ctx(fp_models["digits"]), hp)

    calls = {"n": 0}
    real = Haq.episode_accuracy

    def dies_in_episode_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Haq, "episode_accuracy", dies_in_episode_3)
    with pytest.raises(KeyboardInterrupt):
        Haq().search(_ctx(fp_models["digits"], tmp_path), hp)
    assert len(list(tmp_path.glob("search-*.ckpt"))) == 1
    monkeypatch.setattr(Haq, "episode_accuracy", real)
    ctx = _ctx(fp_models["digits"], tmp_path)
    resumed = Haq().search(ctx, hp)
    assert resumed.layers == whole.layers
    strip = [{k: v for k, v in h.items() if k not in ("macs",)} for h in whole.extra["history"]]
    assert [{k: v for k, v in h.items() if k not in ("macs",)} for h in resumed.extra["history"]] == strip
    assert math.isclose(resumed.extra["history"][-1]["macs"], whole.extra["history"][-1]["macs"], rel_tol=1e-9)
    assert not list(tmp_path.glob("search-*.ckpt"))  # cleared at the end
