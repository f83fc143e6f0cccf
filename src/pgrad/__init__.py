"""pgrad: policy-gradient reinforcement learning, from REINFORCE to PPO, built for production."""

__version__ = "0.1.0"
