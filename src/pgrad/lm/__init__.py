"""Language models (RLHF): PPO on a causal LM with a per-token KL penalty to a frozen reference.

``losses`` is pure torch math and imports nothing else; every other module here may import
``transformers`` (the ``lm`` extra), and no module outside this package does.
"""
