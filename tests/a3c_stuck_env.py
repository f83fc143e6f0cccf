"""A CartPole that stops answering after a number of steps: the stuck-worker drill of tests/test_a3c.py.

Imported by the spawned A3C workers through the entry point ``a3c_stuck_env:StuckCartPole``
(spawn hands the parent's sys.path to its children, so the tests folder is importable there).
"""

import time

from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class StuckCartPole(CartPoleEnv):
    def __init__(self, stuck_after: int = 200) -> None:
        super().__init__()
        self.stuck_after = stuck_after
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps > self.stuck_after:
            time.sleep(3600)  # a hung simulator, a lost connection, a deadlock
        return super().step(action)
