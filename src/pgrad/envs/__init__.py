"""Environment construction, normalisation and state capture."""

from pgrad.envs.factory import SpaceAdapter, check_env_id, make_vector_env
from pgrad.envs.normalize import ObsNormalizer, RewardScaler, RunningMeanStd

__all__ = ["ObsNormalizer", "RewardScaler", "RunningMeanStd", "SpaceAdapter", "check_env_id", "make_vector_env"]
