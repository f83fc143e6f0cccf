"""Names of the metrics that rules, recovery and reports read, in one place.

A rule that reads a misspelt metric name would silently never fire; every reader and every writer
of these metrics uses the constants below instead of spelling the string.
"""

from __future__ import annotations

# written by the algorithms
APPROX_KL = "diagnostics/approx_kl"
CLIP_FRACTION = "diagnostics/clip_fraction"
EXPLAINED_VARIANCE = "diagnostics/explained_variance"
ENTROPY = "diagnostics/entropy"
LOG_STD = "diagnostics/log_std_mean"
GRAD_NORM = "diagnostics/grad_norm"
GRAD_NORM_CLIPPED = "diagnostics/grad_norm_clipped"
SURROGATE_GRAD_NORM = "diagnostics/surrogate_grad_norm"  # TRPO/NPG: no optimizer step, no clipping
# + "/<group>": mean gradient norm of one optimizer's steps in the update, where that optimizer does not
# clip (TRPO/NPG's critic); the update-size rule measures that group per unit of it
GROUP_GRAD_NORM = "diagnostics/group_grad_norm"
LEARNING_RATE = "train/learning_rate"
POLICY_LOSS = "train/policy_loss"
# written by the off-policy algorithms (DDPG, TD3, SAC), per log row
Q_MEAN = "q/mean"
Q_MIN = "q/min"
Q_MAX = "q/max"
TD_ERROR = "q/td_error"
CRITIC_LOSS = "train/critic_loss"
CRITIC_LOSS_SCALE = "q/critic_loss_scale"  # D4PG: log(num_atoms), the cross-entropy of a uniform prediction
ALPHA = "train/alpha"
ALPHA_LOSS = "train/alpha_loss"  # SAC, only while the temperature is learned
VALUE_LOSS = "train/value_loss"

# written by the runners
STEP = "step"
UPDATE = "update"
RETURN_MEAN = "rollout/return_mean"
STEPS_PER_SECOND = "perf/steps_per_second"  # of learning: off-policy rows without an update log the next name
WARMUP_STEPS_PER_SECOND = "perf/warmup_steps_per_second"  # random actions before learning_starts: no updates, faster
LR_SCALE = "train/lr_scale"
NONFINITE_STEPS = "diagnostics/nonfinite_steps"
PARAMS_FINITE = "diagnostics/params_finite"
UPDATE_NORM = "diagnostics/update_norm"  # + "/<group>": ||theta_after - theta_before|| per optimizer (or "step")
RECOVERIES = "diagnostics/recoveries"
ALERTS = "diagnostics/alerts"
PROGRESS = "train/progress"  # env steps / run.total_steps, written by the guard (warm-up is a share of the run)
Q_BOUND = "q/bound"  # off-policy loop: max |reward| stored / (1 - gamma)
EVAL_RETURN_MEAN = "eval/return_mean"
EVAL_RETURN_STD = "eval/return_std"
