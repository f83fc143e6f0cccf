"""Recurrent PPO's fast path and burn-in: the packed fused replay equals the step-by-step recurrence (resets
inside sequences included), the span-cut ``sequence`` carries the same final state, and burn-in steps only warm
the state (no loss, no gradient through them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.config import NetworkConfig
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec
from pgrad.recurrent import RecurrentActorCritic
from pgrad.sequences import SequenceBatch, replay


def network(kind: str = "lstm", shared: bool = False, length: int = 4, burn_in: int = 0) -> NetworkConfig:
    return NetworkConfig(
        hidden_sizes=(8,),
        recurrent=kind,
        recurrent_size=5,
        recurrent_shared=shared,
        sequence_length=length,
        burn_in=burn_in,
    )


def cell_by_hand(model: RecurrentActorCritic, obs, state, starts):
    """The definition, one LSTMCell/GRUCell step at a time: s <- (1 - start_t) s, then the cell."""
    heads, values = [], []
    split = model.actor_core.state_size
    for t in range(obs.shape[0]):
        state = state * (1.0 - starts[t].float())[:, None]
        outs, new = [], []
        cores = [(model.actor_torso, model.actor_core, state[:, :split])]
        if model.critic_core is not None:
            cores.append((model.critic_torso, model.critic_core, state[:, split:]))
        for torso, core, part in cores:
            x = torso(obs[t])
            if core.kind == "lstm":
                h, c = core.cell(x, (part[:, : core.size], part[:, core.size :]))
                new.append(torch.cat((h, c), 1))
            else:
                h = core.cell(x, part)
                new.append(h)
            outs.append(h)
        state = torch.cat(new, 1)
        heads.append(model.policy_head(outs[0]))
        values.append(model.value_head(outs[-1])[:, 0])
    return torch.stack(heads), torch.stack(values), state


@pytest.mark.parametrize(("kind", "shared"), [("lstm", False), ("gru", True)])
def test_fused_and_packed_paths_equal_the_cell_recurrence(kind: str, shared: bool) -> None:
    torch.manual_seed(0)
    model = RecurrentActorCritic(3, ActionSpec("discrete", 2), network(kind, shared))
    obs, state = torch.randn(7, 5, 3), torch.randn(5, model.state_size)
    starts = torch.zeros(7, 5, dtype=torch.bool)
    starts[0, 1] = starts[2, 0] = starts[2, 3] = starts[5, 0] = starts[6, 4] = True  # row 2: never
    with torch.no_grad():
        head, values, final = cell_by_hand(model, obs, state, starts)
        cut_head, cut_values, cut_final = model.sequence(obs, state, starts)
        packed_head, packed_values = model.outputs(obs, state, starts)
        step_head, _, step_final = model.sequence(obs, state, starts, stepwise=True)
    for got in (cut_head, packed_head, step_head):
        torch.testing.assert_close(got, head, rtol=0, atol=1e-6)
    for got in (cut_values, packed_values):
        torch.testing.assert_close(got, values, rtol=0, atol=1e-6)
    for got in (cut_final, step_final):
        torch.testing.assert_close(got, final, rtol=0, atol=1e-6)
    # a reset is real: without starts, row 0's step 5 sees its memory and differs
    no_reset, _ = model.outputs(obs, state, torch.zeros_like(starts))
    assert (no_reset[5, 0] - head[5, 0]).abs().max() > 1e-4


def test_packed_replay_has_the_cell_gradients() -> None:
    torch.manual_seed(1)
    model = RecurrentActorCritic(3, ActionSpec("discrete", 2), network("lstm"))
    obs, state = torch.randn(6, 4, 3), torch.randn(4, model.state_size)
    starts = torch.zeros(6, 4, dtype=torch.bool)
    starts[3, 1] = starts[1, 2] = True
    grads = []
    for run in (lambda: cell_by_hand(model, obs, state, starts)[:2], lambda: model.outputs(obs, state, starts)):
        model.zero_grad()
        head, values = run()
        (head.square().sum() + values.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for by_hand, packed in zip(*grads, strict=True):
        torch.testing.assert_close(packed, by_hand, rtol=1e-4, atol=1e-6)


def sequence_batch(model: RecurrentActorCritic, seed: int = 0) -> SequenceBatch:
    """S = 3 sequences of L = 4 steps, an episode start inside sequence 1, random targets."""
    g = torch.Generator().manual_seed(seed)
    shape = (3, 4)
    starts = torch.zeros(shape, dtype=torch.bool)
    starts[1, 2] = True
    return SequenceBatch(
        obs=torch.randn(*shape, 3, generator=g),
        actions=torch.randint(0, 2, shape, generator=g),
        log_probs=torch.full(shape, -0.69),
        values=torch.randn(shape, generator=g),
        advantages=torch.randn(shape, generator=g),
        returns=torch.randn(shape, generator=g),
        mask=torch.ones(shape),
        starts=starts,
        states=torch.randn(3, model.state_size, generator=g),
    )


def loss_and_grads(ppo: PPO, batch: SequenceBatch) -> tuple[float, list[torch.Tensor]]:
    ppo.model.zero_grad()
    terms = ppo.loss_terms(batch, 0.2)
    terms.loss.backward()
    return float(terms.loss.detach()), [p.grad.clone() for p in ppo.model.parameters()]


def test_burn_in_steps_only_warm_the_state() -> None:
    torch.manual_seed(2)
    config = PPOConfig(num_steps=4, minibatch_size=4, network=network(burn_in=2), ent_coef=0.01)
    ppo = PPO(config, 3, ActionSpec("discrete", 2))
    batch = sequence_batch(ppo.model)
    loss, grads = loss_and_grads(ppo, batch)
    # the loss over the burn-in steps is zero: changing their actions, old log-probs, advantages, returns and
    # values changes neither the loss nor any gradient
    burnt = batch.select(slice(None))
    for name in ("actions", "log_probs", "values", "advantages", "returns"):
        field = getattr(burnt, name).clone()
        field[:, :2] = (1 - field[:, :2]) if name == "actions" else field[:, :2] + 3.0
        burnt = SequenceBatch(**{**{f: getattr(burnt, f) for f in burnt.__dataclass_fields__}, name: field})
    other_loss, other_grads = loss_and_grads(ppo, burnt)
    assert other_loss == loss
    assert all(torch.equal(a, b) for a, b in zip(grads, other_grads, strict=True))
    # ... while their observations warm the state the loss steps start from
    warmed = batch.select(slice(None))
    obs = warmed.obs.clone()
    obs[:, :2] += 1.0
    warmed = SequenceBatch(**{**{f: getattr(warmed, f) for f in warmed.__dataclass_fields__}, "obs": obs})
    assert loss_and_grads(ppo, warmed)[0] != loss
    # and the loss is PPO's over steps 2..3 from that warmed state (no gradient into the warm-up)
    with torch.no_grad():
        _, _, state = ppo.model.sequence(batch.obs[:, :2].transpose(0, 1), batch.states, batch.starts[:, :2].T)
    dist, values, rest = replay(ppo.model, batch, 2)
    assert rest.length == 2 and torch.equal(rest.states, state)
    by_hand, _, _ = replay(ppo.model, batch.after(2).with_states(state))
    assert torch.equal(dist.log_prob(rest.actions), by_hand.log_prob(rest.actions))
    assert not rest.states.requires_grad


def test_burn_in_zero_is_the_plain_loss_and_refusals() -> None:
    torch.manual_seed(3)
    plain = PPO(PPOConfig(num_steps=4, minibatch_size=4, network=network()), 3, ActionSpec("discrete", 2))
    batch = sequence_batch(plain.model, 1)
    dist, values, same = replay(plain.model, batch)
    assert same is batch and values.shape == (3, 4)
    with pytest.raises(ConfigError, match=r"network.burn_in must be in \[0, 4\); got 4"):
        network(burn_in=4)
    with pytest.raises(ConfigError, match=r"network.burn_in must be in \[0, 4\); got -1"):
        network(burn_in=-1)
    np.testing.assert_array_equal(batch.after(3).mask.shape, (3, 1))


@pytest.mark.parametrize(
    ("algo", "sets"),
    [("ppo", []), ("a2c", ["a2c.network.recurrent=lstm"]), ("impala", ["impala.network.recurrent=gru"])],
)
def test_burn_in_without_recurrent_ppo_is_refused_in_one_line(algo, sets):
    """network.burn_in warms recurrent PPO's chunks; elsewhere it would be silently unused, so it is refused."""
    from pgrad.errors import ConfigError
    from pgrad.runs import resolve_config

    with pytest.raises(ConfigError, match=rf"{algo}.network.burn_in must be 0 unless ppo.network.recurrent") as caught:
        resolve_config(algo, "CartPole-v1", sets=[*sets, f"{algo}.network.burn_in=2"])
    assert "\n" not in str(caught.value)
