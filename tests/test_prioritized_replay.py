"""Prioritised replay (issue 28, point 2): the sum-tree's sums, proportional sampling against the exact
probabilities and a brute-force sampler, importance weights against hand values, beta's annealing, new rows at
the running maximum, n-step windows against the estimator, bit-exact checkpoint round trips and a
prioritised TD3 run that resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pgrad.errors import ConfigError
from pgrad.estimators import nstep_returns
from pgrad.replay import (
    PrioritizedReplayBuffer,
    PrioritySettings,
    ReplayBuffer,
    SumTree,
    importance_weights,
    make_replay_buffer,
    nstep_windows,
)
from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runs import resolve_config

CPU = torch.device("cpu")


def filled(buffer: ReplayBuffer, count: int, rewards: np.ndarray | None = None, done: np.ndarray | None = None) -> None:
    """``count`` transitions with obs = row number, so a sampled row names itself."""
    rows = np.arange(count, dtype=np.float32)
    buffer.add(
        np.stack([rows, rows], 1),
        rows[:, None],
        rows if rewards is None else rewards,
        np.stack([rows + 1, rows + 1], 1),
        np.zeros(count, bool) if done is None else done,
        np.zeros(count, bool),
    )


def per(capacity: int, alpha: float = 1.0, beta: float = 0.4, eps: float = 1e-6) -> PrioritizedReplayBuffer:
    return PrioritizedReplayBuffer(capacity, 2, 1, PrioritySettings(alpha=alpha, beta=beta, eps=eps))


# ---- the tree ------------------------------------------------------------------------------------------


def test_every_inner_node_is_the_sum_of_its_children_after_updates():
    tree = SumTree(13)  # not a power of two: 16 leaves, 3 unused
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = rng.integers(0, 13, 5)
        tree.update(rows, rng.random(5))
    inner = np.arange(1, tree.size)
    np.testing.assert_array_equal(tree.nodes[inner], tree.nodes[2 * inner] + tree.nodes[2 * inner + 1])
    assert tree.total == pytest.approx(tree.leaves().sum(), rel=1e-12)
    assert tree.nodes[tree.size + 13 :].sum() == 0.0  # unused leaves stay empty
    tree.update(np.array([2, 2]), np.array([5.0, 7.0]))  # a repeated row: the later value wins
    assert tree.leaves()[2] == 7.0


def test_find_returns_the_leaf_whose_prefix_interval_holds_the_value():
    tree = SumTree(4)
    tree.update(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))  # intervals [0,1) [1,3) [3,6) [6,10)
    values = np.array([0.0, 0.999, 1.0, 2.5, 3.0, 5.999, 6.0, 9.999])
    np.testing.assert_array_equal(tree.find(values), [0, 0, 1, 1, 2, 2, 3, 3])


# ---- sampling ----------------------------------------------------------------------------------------------


def frequencies(buffer: PrioritizedReplayBuffer, draws: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.concatenate([buffer.sample_rows(100, rng) for _ in range(draws // 100)])
    return np.bincount(rows, minlength=buffer.capacity) / len(rows)


def test_priorities_one_to_four_with_alpha_one_sample_index_three_four_times_as_often_as_index_zero():
    buffer = per(4, alpha=1.0, eps=0.0)
    filled(buffer, 4)
    buffer.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(buffer.probabilities(np.arange(4)), [0.1, 0.2, 0.3, 0.4])
    freq = frequencies(buffer, 40_000)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.01)
    assert freq[3] / freq[0] == pytest.approx(4.0, rel=0.1)


def test_alpha_zero_is_uniform():
    buffer = per(4, alpha=0.0)
    filled(buffer, 4)
    buffer.update_priorities(np.arange(4), np.array([1.0, 20.0, 300.0, 4000.0]))
    np.testing.assert_allclose(buffer.probabilities(np.arange(4)), 0.25)


def test_sampling_matches_a_brute_force_sampler_chi_square():
    """Priorities |delta|^0.6 over 37 rows: the tree's draws and a brute-force ``rng.choice(p=...)`` both pass a
    chi-square test against P(i) = p_i^alpha / sum p^alpha (critical value of chi2 with 36 dof at 0.999: 67.98)."""
    rng = np.random.default_rng(1)
    errors = rng.exponential(1.0, 37)
    buffer = per(50, alpha=0.6, eps=1e-3)
    filled(buffer, 37)
    buffer.update_priorities(np.arange(37), errors)
    expected = (np.abs(errors) + 1e-3) ** 0.6
    expected /= expected.sum()
    np.testing.assert_allclose(buffer.probabilities(np.arange(37)), expected, rtol=1e-12)
    draws = 20_000
    tree_counts = np.bincount(np.concatenate([buffer.sample_rows(100, rng) for _ in range(draws // 100)]), minlength=50)
    brute_counts = np.bincount(rng.choice(37, draws, p=expected), minlength=37)
    assert tree_counts[37:].sum() == 0  # unwritten rows are never drawn
    for counts in (tree_counts[:37], brute_counts):
        chi2 = float((((counts - draws * expected) ** 2) / (draws * expected)).sum())
        assert chi2 < 67.98


def test_new_rows_enter_at_the_running_maximum_priority_or_at_given_ones():
    buffer = per(8, alpha=1.0, eps=0.0)
    filled(buffer, 2)
    assert buffer.tree.leaves(2).tolist() == [1.0, 1.0]  # nothing seen yet: priority 1
    buffer.update_priorities(np.array([0, 1]), np.array([5.0, 0.5]))
    filled(buffer, 1)
    assert buffer.tree.leaves(3).tolist() == [5.0, 0.5, 5.0]
    rows = np.arange(2, dtype=np.float32)  # an APE-X actor's batch with its own initial priorities
    buffer.add(
        np.zeros((2, 2)), np.zeros((2, 1)), rows, np.zeros((2, 2)), np.zeros(2, bool), np.zeros(2, bool), [2.0, 9.0]
    )
    assert buffer.tree.leaves(5).tolist() == [5.0, 0.5, 5.0, 2.0, 9.0] and buffer.max_priority == 9.0


def test_importance_weights_against_hand_values():
    # P = [0.1, 0.4], N = 4, beta = 0.5: w = (0.4)^-0.5 = 1.5811, (1.6)^-0.5 = 0.7906; / max -> [1, 0.5]
    np.testing.assert_allclose(importance_weights(np.array([0.1, 0.4]), 4, 0.5), [1.0, 0.5])
    np.testing.assert_allclose(importance_weights(np.array([0.1, 0.4]), 4, 1.0), [1.0, 0.25])
    np.testing.assert_allclose(importance_weights(np.array([0.1, 0.4]), 4, 0.0), [1.0, 1.0])
    buffer = per(4, alpha=1.0, beta=1.0, eps=0.0)
    filled(buffer, 4)
    buffer.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    batch = buffer.sample(4, np.random.default_rng(0), CPU)  # stratified: one row per quarter of the total
    assert batch.indices is not None and batch.weights is not None
    expected = (0.1 / buffer.probabilities(batch.indices)).astype(np.float32)  # beta 1: w = P_min / P_i
    np.testing.assert_allclose(batch.weights.numpy(), expected / expected.max(), rtol=1e-6)
    np.testing.assert_array_equal(batch.obs[:, 0].numpy(), batch.indices)  # the rows drawn are the rows returned


def test_beta_anneals_linearly_to_one_by_its_end_fraction():
    settings = PrioritySettings(beta=0.4, beta_end=0.5)
    assert [settings.beta_at(p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.4, 0.7, 1.0, 1.0])


# ---- n-step windows --------------------------------------------------------------------------------------


def test_nstep_windows_cut_at_episode_ends_and_at_the_newest_row_and_match_the_estimator():
    """Rewards [1, 1, 1, 1, 1] with row 2 terminated, gamma 0.5, n 3: windows from row 0: 1 + .5 + .25 (ends at
    the terminal row 2, gamma^3); row 1: 1 + .5 (ends at row 2); row 3: 1 + .5, then the newest row ends it."""
    buffer = ReplayBuffer(8, 2, 1)
    buffer.rewards[:] = np.nan  # unwritten rows hold whatever np.empty gave: none of it may leak in
    filled(buffer, 5, rewards=np.ones(5, np.float32), done=np.array([0, 0, 1, 0, 0], bool))
    window = nstep_windows(np.array([0, 1, 2, 3, 4]), buffer, 3, 0.5)
    np.testing.assert_allclose(window.returns, [1.75, 1.5, 1.0, 1.5, 1.0])
    np.testing.assert_array_equal(window.last, [2, 2, 2, 4, 4])
    np.testing.assert_allclose(window.discounts, [0.125, 0.25, 0.5, 0.25, 0.5])
    # the estimator's n-step return with V(s') = next_obs[:, 0] gives the same targets
    next_values = buffer.next_obs[:5, 0].astype(np.float64)[:, None]
    terminated, truncated = buffer.terminated[:5, None], np.zeros((5, 1), bool)
    reference = nstep_returns(np.ones((5, 1)), next_values, terminated, truncated, 0.5, 3)[:, 0]
    ours = window.returns + window.discounts * (1 - buffer.terminated[window.last]) * next_values[window.last, 0]
    np.testing.assert_allclose(ours, reference)


def test_nstep_windows_stop_at_the_ring_seam():
    buffer = ReplayBuffer(4, 2, 1)
    filled(buffer, 4, rewards=np.arange(4, dtype=np.float32))
    filled(buffer, 2, rewards=np.arange(4, 6, dtype=np.float32))  # rows hold transitions 4, 5, 2, 3; newest row 1
    window = nstep_windows(np.array([2, 3, 0, 1]), buffer, 3, 1.0)
    np.testing.assert_allclose(window.returns, [2 + 3 + 4, 3 + 4 + 5, 4 + 5, 5])
    np.testing.assert_array_equal(window.last, [0, 1, 1, 1])


# ---- checkpoints, config, the runner -----------------------------------------------------------------------


def test_state_round_trip_rebuilds_the_tree_bit_for_bit_and_draws_the_same_batches():
    buffer = per(16, alpha=0.6)
    filled(buffer, 11)
    buffer.update_priorities(np.arange(11), np.random.default_rng(3).random(11))
    restored = per(16, alpha=0.6)
    restored.load_state_arrays({k: v.copy() for k, v in buffer.state_arrays().items()})
    np.testing.assert_array_equal(restored.tree.nodes, buffer.tree.nodes)
    assert restored.max_priority == buffer.max_priority
    a, b = buffer.sample(32, np.random.default_rng(9), CPU), restored.sample(32, np.random.default_rng(9), CPU)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert torch.equal(a.weights, b.weights)
    uniform_state = ReplayBuffer(16, 2, 1)
    filled(uniform_state, 3)
    with pytest.raises(ValueError, match="holds no priorities"):
        per(16).load_state_arrays(uniform_state.state_arrays())


def test_loop_settings_pick_the_buffer_and_bad_values_name_the_field():
    sets = ["loop.replay=prioritized", "loop.priority_alpha=0.7"]
    loop = resolve_config("td3", "Pendulum-v1", sets=sets)[0].algo_config.loop
    buffer = make_replay_buffer(loop, 3, 1)
    assert isinstance(buffer, PrioritizedReplayBuffer) and buffer.settings.alpha == 0.7
    assert type(make_replay_buffer(resolve_config("td3", "Pendulum-v1")[0].algo_config.loop, 3, 1)) is ReplayBuffer
    with pytest.raises(ConfigError, match=r"td3.loop.priority_alpha must be in \[0, 1\]"):
        resolve_config("td3", "Pendulum-v1", sets=["loop.priority_alpha=1.5"])
    with pytest.raises(ConfigError, match="loop.replay"):
        resolve_config("td3", "Pendulum-v1", sets=["loop.replay=rank"])


SETS = [
    "run.progress=false",
    "run.tensorboard=false",
    "run.checkpoint_every=1000000",
    "network.hidden_sizes=[16, 16]",
    "loop.batch_size=16",
    "loop.learning_starts=100",
    "loop.log_every=100",
    "loop.replay=prioritized",
    "loop.buffer_size=1000",
]


@pytest.mark.parametrize("algo", ["td3", pytest.param("sac", marks=pytest.mark.slow)])
def test_a_prioritized_run_resumes_bit_exactly(tmp_path, algo):
    config, _ = resolve_config(
        algo, "Pendulum-v1", sets=[f"{algo}.{s}" if s.startswith(("net", "loop")) else s for s in SETS], total_steps=300
    )
    whole = OffPolicyRunner(config, tmp_path / "a", console=False)
    assert isinstance(whole.buffer, PrioritizedReplayBuffer)
    whole.train()
    first = OffPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=200)
    resumed = OffPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()
    np.testing.assert_array_equal(whole.buffer.tree.nodes, resumed.buffer.tree.nodes)
    assert whole.buffer.max_priority == resumed.buffer.max_priority
    for name, module in whole.algo.modules().items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, resumed.algo.modules()[name].state_dict()[key]), f"{name}.{key}"
    last = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.4 < last["replay/beta"] <= 1.0 and 0 < last["replay/weight/min"] <= 1.0
    assert "replay/td_abs" not in last  # the priorities go to the buffer, not into the metrics
    # the priorities moved away from the initial maximum: the learner's TD errors reached the tree
    assert len(np.unique(whole.buffer.tree.leaves(whole.buffer.size))) > 10
