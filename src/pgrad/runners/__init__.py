"""Runners: the loops that train an algorithm, chosen by the algorithm's kind (``pgrad.registry``).

- ``on_policy``: the synchronous collect -> prepare -> update loop;
- ``asynchronous``: A3C's coordinator and its Hogwild workers;
- ``off_policy``: DDPG, TD3 and SAC: act, store in the replay buffer, sampled gradient steps;
- ``actor_learner``: IMPALA: the on-policy loop with the asynchronous Ray actors' collector
  (``pgrad.runners.ray_backend``); ``run.backend: ray`` puts any on-policy algorithm's rollouts on Ray workers;
- ``multi_agent``: MAPPO and IPPO on a PettingZoo parallel env (``pgrad.runners.multi_agent``), MADDPG with its
  joint replay (``pgrad.runners.team_replay``);
- ``lm_ppo``: PPO, RLOO and GRPO on a language model (``pgrad.runners.lm_ppo``);
- ``lm_rows``: the row-by-row language-model trainers: SFT, reward models, DPO (``pgrad.runners.lm_sft``,
  ``lm_rm``, ``lm_dpo``; they need pgrad[lm]).

Every loop is a body driven by the trunk's prologue and loop skeleton (``pgrad.runners.trunk``).
"""

from __future__ import annotations

from typing import Any

from pgrad.config import TrainConfig
from pgrad.errors import PgradError
from pgrad.registry import get_algorithm


def runner_for(config: TrainConfig) -> Any:
    """The runner class for the config's algorithm, chosen by its kind (imported on demand, so a
    command that runs PPO never imports the multiprocessing machinery of A3C)."""
    kind = get_algorithm(config.algo).kind
    if kind in ("lm_ppo", "lm_rows"):
        return _language_model_runner(config.algo)
    if kind == "asynchronous":
        from pgrad.runners.asynchronous import A3CRunner

        return A3CRunner
    if kind == "multi_agent" and config.algo == "maddpg":
        from pgrad.runners.team_replay import MADDPGRunner

        return MADDPGRunner
    if kind == "multi_agent":
        from pgrad.runners.multi_agent import MultiAgentRunner

        return MultiAgentRunner
    if kind == "off_policy":
        from pgrad.runners.off_policy import OffPolicyRunner

        return OffPolicyRunner
    from pgrad.runners.on_policy import OnPolicyRunner

    return OnPolicyRunner


def _language_model_runner(algo: str) -> Any:
    """The runner of a language-model algorithm; transformers missing is one line naming the extra."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:  # found, not imported: only the LM modules import it
        raise PgradError("language models need transformers: pip install 'pgrad[lm]'")
    from pgrad.runners.lm_dpo import DPORunner
    from pgrad.runners.lm_ppo import LMPPORunner
    from pgrad.runners.lm_rm import RewardModelRunner
    from pgrad.runners.lm_sft import SFTRunner

    runners: dict[str, Any] = {
        "lm_ppo": LMPPORunner,
        "lm_rm": RewardModelRunner,
        "lm_sft": SFTRunner,
        "lm_dpo": DPORunner,
    }
    return runners[algo]
