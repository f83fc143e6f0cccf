"""Running statistics for observation normalisation and reward scaling.

Both are plain NumPy state (saved in checkpoints as tensors, frozen at evaluation) rather than
Gymnasium wrappers, so the statistics are visible, testable and restorable exactly.
"""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Mean and variance over all rows seen so far (parallel algorithm, Chan et al. 1979)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        """Merges a batch's mean and variance into the running ones (Chan et al.'s parallel update); an empty batch
        changes nothing."""
        if batch.shape[0] == 0:
            return
        batch_mean = batch.mean(axis=0)
        batch_var = batch.var(axis=0)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state(self) -> dict[str, np.ndarray]:
        """Mean, variance and count as arrays, for the checkpoint."""
        return {"mean": self.mean, "var": self.var, "count": np.array(self.count, np.float64)}

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Restores what ``state`` returned."""
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        self.count = float(np.asarray(state["count"]).reshape(-1)[0])


class ObsNormalizer:
    """obs -> clip((obs - mean) / sqrt(var + eps), -clip, clip); statistics updated while training.

    The collector counts each observation once, when the environment returns it (``observe``), and
    normalises it with ``update=False`` when it is used, as SB3's VecNormalize does: the bootstrap
    observation after a rollout's last step is normalised with statistics that include it, and an
    episode's final observation is never counted (it is only acted on in Gymnasium's autoreset step,
    whose action is ignored; counting it skews the statistics towards the states episodes end in,
    +10 % std on some dimensions of a young Hopper policy).
    """

    def __init__(
        self, shape: tuple[int, ...], clip: float, enabled: bool, epsilon: float = 1e-8, mask: np.ndarray | None = None
    ) -> None:
        self.stats = RunningMeanStd(shape)
        self.clip = clip
        self.enabled = enabled
        self.epsilon = epsilon
        # [obs_dim] bool: the entries normalised; the others (a Dict observation's image pixels, which the CNN
        # scales by /255) pass through unchanged. None: all of them.
        self.mask = mask

    def observe(self, obs: np.ndarray, counted: np.ndarray | None = None) -> None:
        """Add the rows of ``obs`` to the statistics (only those where ``counted`` is True, if given)."""
        if self.enabled:
            self.stats.update(obs if counted is None or counted.all() else obs[counted])

    def __call__(self, obs: np.ndarray, update: bool) -> np.ndarray:
        if not self.enabled:
            return obs.astype(np.float32, copy=False)
        if update:
            self.stats.update(obs)
        scaled = np.clip((obs - self.stats.mean) / np.sqrt(self.stats.var + self.epsilon), -self.clip, self.clip)
        if self.mask is not None:
            scaled = np.where(self.mask, scaled, obs)
        return scaled.astype(np.float32)


class RewardScaler:
    """r -> clip(r / sqrt(Var[R] + eps)), R the running discounted return R = gamma R + r.

    No mean is subtracted: shifting rewards would change the optimal policy where episodes can
    end. Only steps that belong to an episode (``valid``) update the statistics.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float, enabled: bool, epsilon: float = 1e-8) -> None:
        self.stats = RunningMeanStd(())
        self.running_return = np.zeros(num_envs, np.float64)
        self.gamma = gamma
        self.clip = clip
        self.enabled = enabled
        self.epsilon = epsilon

    def __call__(self, rewards: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return rewards.astype(np.float32, copy=False)
        self.running_return = np.where(valid, self.running_return * self.gamma + rewards, self.running_return)
        self.stats.update(self.running_return[valid])
        self.running_return[done] = 0.0
        scaled = rewards / np.sqrt(self.stats.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)
