"""TRL's training arguments, one table for every trainer, read by ``pgrad.lm.trainers`` and by the docs.

``TRL_ARGUMENTS[name]`` says what TRL's argument ``name`` (of ``GRPOConfig``, ``RLOOConfig``, ``PPOConfig``,
``DPOConfig``, ``SFTConfig``, ``RewardConfig`` and their ``TrainingArguments``) is in pgrad: *mapped* (``convert``
turns its value into pgrad config fields: ``num_generations=4`` is ``lm_ppo.samples_per_prompt: 4``), accepted
only at the values in ``allowed`` (where pgrad does what TRL does: ``packing=False``), or refused with one
``ConfigError`` line naming the pgrad way. The thin configs below (``GRPOConfig(learning_rate=1e-5, ...)``) read
their keywords through it; ``docs/lm-python-api.md`` holds ``markdown_table()``'s output (a test keeps them equal).

Four arguments count in TRL's units and are converted with the resolved section (``step_fields``):
``num_train_epochs`` counts passes (epochs x training rows, whole updates); ``max_steps``, ``save_steps`` and
``eval_steps`` count optimizer steps, pgrad's ``run.total_steps``,
``run.checkpoint_every`` and ``eval_every`` count rows (responses for PPO, RLOO and GRPO; pairs or demonstrations
otherwise). An update of PPO, RLOO or GRPO takes ``num_epochs x batch_size / minibatch_size`` optimizer steps on
``batch_size`` responses, so n optimizer steps are ``ceil(n / steps_per_update) x batch_size`` responses; a row
trainer takes one step per ``batch_size`` rows.

Fields left out take pgrad's defaults, not TRL's (sized for a small model on a CPU; ``pgrad list lm_ppo``).
A keyword that is not TRL's but a field of the trainer's pgrad section (``eval_every``, ``max_new_tokens``) is
taken as that field. No torch here.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from pgrad.errors import ConfigError
from pgrad.lm.config import ALGO, CONFIG_CLASSES, DPO_ALGO, RM_ALGO, SFT_ALGO

# value, section name -> {dotted config path: value}, e.g. {"lm_ppo.samples_per_prompt": 4}
Convert = Callable[[Any, str], dict[str, Any]]

# TRL's trainer -> pgrad's algorithm section (and, for lm_ppo, the advantage)
TRAINERS: dict[str, tuple[str, str | None]] = {
    "grpo": (ALGO, "grpo"),
    "rloo": (ALGO, "rloo"),
    "ppo": (ALGO, "gae"),
    "dpo": (DPO_ALGO, None),
    "sft": (SFT_ALGO, None),
    "reward": (RM_ALGO, None),
}
SAMPLING = ("grpo", "rloo", "ppo")  # the trainers that sample responses (lm_ppo)
ROWS = ("dpo", "sft", "reward")  # the trainers that read rows (pairs, demonstrations)
ALL = SAMPLING + ROWS
# the arguments converted in TRL's units once the section is resolved (step_fields), not by their table entry
STEP_ARGUMENTS = ("max_steps", "save_steps", "eval_steps")
BATCH_ARGUMENTS = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_mini_batches")
TRL_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_mini_batches": 1}


@dataclass(frozen=True)
class TrlArgument:
    """How one TRL argument lands in pgrad: ``convert`` maps its value onto config fields, or (``convert`` None)
    the values in ``allowed`` are accepted because pgrad does the same, and any other is refused naming ``pgrad``.
    ``trainers``: the TRL trainers whose config has it."""

    pgrad: str  # the pgrad spelling ("{section}.samples_per_prompt"), or the pgrad way in words
    trainers: tuple[str, ...] = ALL
    convert: Convert | None = None
    allowed: tuple[Any, ...] = ()
    note: str = ""  # what differs, for the table

    def spelling(self, section: str) -> str:
        """The pgrad spelling with the trainer's section filled in."""
        return self.pgrad.replace("{section}", section)

    def apply(self, name: str, value: Any, section: str) -> dict[str, Any]:
        """The config fields for ``name=value`` (dotted paths), or one ConfigError naming the pgrad way."""
        if self.convert is not None:
            return self.convert(value, section)
        if any(_same(value, allowed) for allowed in self.allowed):
            return {}
        if not self.allowed:
            raise ConfigError(f"{name} is not offered by pgrad; {self.spelling(section)}")
        shown = " or ".join(repr(a) for a in self.allowed)
        raise ConfigError(f"{name}={_short(value)} is not offered by pgrad (only {shown}); {self.spelling(section)}")


def _same(value: Any, allowed: Any) -> bool:
    """``value`` is the allowed one: None and True/False by identity (0 is not False), others by ``==``."""
    if allowed is None or isinstance(allowed, bool):
        return value is allowed
    return not isinstance(value, bool) and bool(value == allowed)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- converters ---------------------------------------------------------------------------------------------


def field(path: str) -> Convert:
    """The value unchanged, at ``path`` (``{section}`` is the trainer's section)."""
    return lambda value, section: {path.replace("{section}", section): value}


def held(name: str) -> Convert:
    """A value kept for the trainer to read (``step_fields``, the batch fields), under ``_trl.<name>``."""
    return lambda value, section: {f"_trl.{name}": value}


GRPO_LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "token_mean", "dr_grpo": "dr_grpo"}


def _loss_type(value: Any, section: str) -> dict[str, Any]:
    """TRL's GRPO loss_type names (pgrad's own names pass too)."""
    own = ("token_mean", "sequence_mean", "dr_grpo")
    if value not in GRPO_LOSS_TYPES and value not in own:
        allowed = ", ".join([*GRPO_LOSS_TYPES, *own])
        raise ConfigError(f"loss_type={_short(value)} is not offered (allowed: {allowed}); {section}.loss_type")
    return {f"{section}.loss_type": GRPO_LOSS_TYPES.get(value, value)}


def _scale_rewards(value: Any, section: str) -> dict[str, Any]:
    """GRPO divides the group-centred rewards by the group's std (TRL's True / 'group'); pgrad drops it only with
    Dr. GRPO's loss (held for the trainer to check against loss_type)."""
    if value in (True, "group"):
        return {}
    if value in (False, "none"):
        return {"_trl.scale_rewards": False}
    raise ConfigError(f"scale_rewards={_short(value)} is not offered (True/'group', or False with loss_type='dr_grpo')")


def _beta(value: Any, section: str) -> dict[str, Any]:
    """TRL's ``beta``: the KL coefficient of GRPO and RLOO, DPO's own ``beta``."""
    return {f"{section}.beta" if section == DPO_ALGO else f"{section}.kl_coef": value}


def _report_to(value: Any, section: str) -> dict[str, Any]:
    """TRL's trackers as pgrad's ``run`` switches."""
    given = [value] if isinstance(value, str) else list(value or [])
    known = {"tensorboard": "run.tensorboard", "wandb": "run.wandb", "mlflow": "run.mlflow"}
    if given in (["none"], ["all"]):
        given = [] if given == ["none"] else list(known)
    unknown = [item for item in given if item not in known]
    if unknown:
        raise ConfigError(f"report_to={_short(value)}: pgrad reports to {', '.join(known)} or 'none'")
    return {path: name in given for name, path in known.items()}


def _use_cpu(value: Any, section: str) -> dict[str, Any]:
    if not isinstance(value, bool):
        raise ConfigError(f"use_cpu must be True or False; got {_short(value)}")
    return {"run.device": "cpu"} if value else {}


def _precision(name: str) -> Convert:
    """TRL's bf16 / fp16 flags as the section's ``model.precision`` (pgrad.lm.precision: fp16 needs CUDA)."""

    def convert(value: Any, section: str) -> dict[str, Any]:
        if value is False or value is None:
            return {}
        if value is not True:
            raise ConfigError(f"{name} must be True or False; got {_short(value)}")
        return {f"{section}.model.precision": name}

    return convert


def _model_flag(name: str) -> Convert:
    """A boolean TRL argument with a pgrad field of the same name in the section's ``model``."""

    def convert(value: Any, section: str) -> dict[str, Any]:
        if value is False:
            return {}
        if value is not True:
            raise ConfigError(f"{name} must be True or False; got {_short(value)}")
        return {f"{section}.model.{name}": True}

    return convert


STEPS_NOTE = "TRL counts optimizer steps, pgrad rows: converted (module docstring)"
BATCH_NOTE = (
    "responses per optimizer step (minibatch_size) = per_device_train_batch_size x gradient_accumulation_steps; "
    "per update (batch_size) x num_mini_batches (PPO, RLOO) or x 1 (GRPO: one step per generation batch)"
)
ROWS_BATCH_NOTE = "rows trainers: batch_size = per_device_train_batch_size x gradient_accumulation_steps"

TRL_ARGUMENTS: dict[str, TrlArgument] = {
    # ---- TrainingArguments, every trainer ----
    "output_dir": TrlArgument("the trainer's run_dir (the run folder)", convert=held("output_dir")),
    "seed": TrlArgument("run.seed", convert=field("run.seed")),
    "learning_rate": TrlArgument(
        "{section}.optimizer.learning_rate", convert=field("{section}.optimizer.learning_rate")
    ),
    "adam_epsilon": TrlArgument("{section}.optimizer.eps", convert=field("{section}.optimizer.eps")),
    "max_grad_norm": TrlArgument("{section}.max_grad_norm", convert=field("{section}.max_grad_norm")),
    "max_steps": TrlArgument("run.total_steps", convert=held("max_steps"), note=STEPS_NOTE),
    "save_steps": TrlArgument("run.checkpoint_every", convert=held("save_steps"), note=STEPS_NOTE),
    "eval_steps": TrlArgument("{section}.eval_every", convert=held("eval_steps"), note=STEPS_NOTE),
    "per_device_train_batch_size": TrlArgument(
        "{section}.batch_size, {section}.minibatch_size", convert=held("per_device_train_batch_size"), note=BATCH_NOTE
    ),
    "gradient_accumulation_steps": TrlArgument(
        "{section}.batch_size", convert=held("gradient_accumulation_steps"), note=BATCH_NOTE + "; " + ROWS_BATCH_NOTE
    ),
    "report_to": TrlArgument("run.tensorboard, run.wandb, run.mlflow", convert=_report_to),
    "use_cpu": TrlArgument("run.device: cpu", convert=_use_cpu),
    "bf16": TrlArgument("{section}.model.precision: bf16", convert=_precision("bf16")),
    "fp16": TrlArgument("{section}.model.precision: fp16 (CUDA only)", convert=_precision("fp16")),
    "gradient_checkpointing": TrlArgument(
        "{section}.model.gradient_checkpointing", convert=_model_flag("gradient_checkpointing")
    ),
    "logging_steps": TrlArgument(
        "no setting: pgrad writes one metrics.jsonl row per update", convert=lambda value, section: {}
    ),
    "num_train_epochs": TrlArgument(
        "run.total_steps",
        convert=held("num_train_epochs"),
        note="epochs x the training rows (x num_generations for prompts), in whole updates; max_steps wins",
    ),  # fmt: skip
    "lr_scheduler_type": TrlArgument(
        "language-model runs keep a constant learning rate (the guard may cut it)", allowed=("constant",)
    ),
    "warmup_steps": TrlArgument("no warm-up in language-model runs", allowed=(0,)),
    "warmup_ratio": TrlArgument("no warm-up in language-model runs", allowed=(0, 0.0)),
    "weight_decay": TrlArgument("pgrad's optimizer is Adam without weight decay", allowed=(0, 0.0)),
    "optim": TrlArgument("pgrad's optimizer is Adam (AdamW without decay)", allowed=("adamw_torch", "adam")),
    "adam_beta1": TrlArgument("Adam's betas are torch's defaults (0.9, 0.999)", allowed=(0.9,)),
    "adam_beta2": TrlArgument("Adam's betas are torch's defaults (0.9, 0.999)", allowed=(0.999,)),
    "per_device_eval_batch_size": TrlArgument(
        "{section}.eval_prompts: prompts per evaluation, scored in one batch",
        trainers=("grpo", "rloo", "ppo", "dpo", "sft"),
    ),
    "push_to_hub": TrlArgument("nothing leaves the machine: save_model(DIR) writes a model folder", allowed=(False,)),
    "disable_dropout": TrlArgument("pgrad trains with dropout off (the models run in eval mode)", allowed=(True,)),
    # ---- GRPO, RLOO, PPO: sampling ----
    "num_generations": TrlArgument(
        "{section}.samples_per_prompt", trainers=("grpo", "rloo"), convert=field("{section}.samples_per_prompt")
    ),
    "rloo_k": TrlArgument(
        "{section}.samples_per_prompt", trainers=("rloo",), convert=field("{section}.samples_per_prompt")
    ),
    "max_completion_length": TrlArgument(
        "{section}.max_new_tokens", trainers=("grpo", "rloo", "dpo"), convert=field("{section}.max_new_tokens")
    ),
    "response_length": TrlArgument(
        "{section}.max_new_tokens", trainers=("ppo", "rloo"), convert=field("{section}.max_new_tokens")
    ),
    "temperature": TrlArgument("{section}.temperature", trainers=SAMPLING, convert=field("{section}.temperature")),
    "top_p": TrlArgument("sampling is at temperature alone", trainers=SAMPLING, allowed=(1.0, 1)),
    "top_k": TrlArgument("sampling is at temperature alone", trainers=SAMPLING, allowed=(None, 0)),
    "min_p": TrlArgument("sampling is at temperature alone", trainers=SAMPLING, allowed=(None,)),
    "repetition_penalty": TrlArgument("sampling is at temperature alone", trainers=SAMPLING, allowed=(1.0, 1)),
    "max_prompt_length": TrlArgument(
        "prompts are kept whole (up to the model's context)", trainers=SAMPLING + ("dpo",), allowed=(None,)
    ),
    "beta": TrlArgument(
        "lm_ppo.kl_coef (GRPO, RLOO), lm_dpo.beta (DPO)",
        trainers=("grpo", "rloo", "dpo"),
        convert=_beta,
        note="GRPO's KL coefficient; DPO's temperature of the implicit reward",
    ),  # fmt: skip
    "kl_coef": TrlArgument("{section}.kl_coef", trainers=("ppo", "rloo"), convert=field("{section}.kl_coef")),
    "num_iterations": TrlArgument(
        "{section}.num_epochs", trainers=("grpo", "rloo"), convert=field("{section}.num_epochs")
    ),
    "num_ppo_epochs": TrlArgument(
        "{section}.num_epochs", trainers=("ppo", "rloo"), convert=field("{section}.num_epochs")
    ),
    "num_mini_batches": TrlArgument(
        "{section}.batch_size / {section}.minibatch_size",
        trainers=("ppo", "rloo"),
        convert=held("num_mini_batches"),
        note=BATCH_NOTE,
    ),
    "epsilon": TrlArgument("{section}.clip_eps", trainers=("grpo", "rloo"), convert=field("{section}.clip_eps")),
    "cliprange": TrlArgument("{section}.clip_eps", trainers=("ppo",), convert=field("{section}.clip_eps")),
    "epsilon_high": TrlArgument(
        "one clip range: {section}.clip_eps (DAPO's asymmetric clip is not offered)",
        trainers=("grpo", "rloo"),
        allowed=(None,),
    ),
    "loss_type": TrlArgument(
        "{section}.loss_type",
        trainers=("grpo", "rloo", "dpo"),
        convert=_loss_type,
        note="grpo -> sequence_mean, bnpo and dapo -> token_mean, dr_grpo -> dr_grpo; DPO: sigmoid only",
    ),  # fmt: skip
    "scale_rewards": TrlArgument(
        "{section}.loss_type: dr_grpo (drops the std division)", trainers=("grpo",), convert=_scale_rewards
    ),
    "reward_weights": TrlArgument(
        "the weight of each reward term ({section}.reward's list)",
        trainers=("grpo", "rloo"),
        convert=held("reward_weights"),
    ),
    "log_completions": TrlArgument(
        "always on: each evaluation writes samples/step_N.jsonl in the run folder",
        trainers=SAMPLING,
        allowed=(True, False),
    ),
    "use_vllm": TrlArgument("pgrad samples with the model itself (KV cache)", trainers=SAMPLING, allowed=(False,)),
    "mask_truncated_completions": TrlArgument("not offered", trainers=("grpo", "rloo"), allowed=(False,)),
    "sync_ref_model": TrlArgument("the reference stays frozen", trainers=("grpo", "rloo", "dpo"), allowed=(False,)),
    "generation_batch_size": TrlArgument(
        "per_device_train_batch_size x gradient_accumulation_steps responses per update",
        trainers=("grpo", "rloo"),
        allowed=(None,),
    ),
    "steps_per_generation": TrlArgument(
        "one optimizer step per generation batch per iteration (num_iterations)",
        trainers=("grpo", "rloo"),
        allowed=(None,),
    ),
    # ---- PPO ----
    "total_episodes": TrlArgument(
        "run.total_steps (responses)", trainers=("ppo", "rloo"), convert=field("run.total_steps")
    ),
    "cliprange_value": TrlArgument("{section}.clip_vf", trainers=("ppo",), convert=field("{section}.clip_vf")),
    "vf_coef": TrlArgument("{section}.vf_coef", trainers=("ppo",), convert=field("{section}.vf_coef")),
    "gamma": TrlArgument("{section}.gamma", trainers=("ppo",), convert=field("{section}.gamma")),
    "lam": TrlArgument("{section}.gae_lambda", trainers=("ppo",), convert=field("{section}.gae_lambda")),
    "kl_estimator": TrlArgument(
        "k1 in the reward (GRPO's k3 sits in its loss)", trainers=("ppo", "rloo"), allowed=("k1",)
    ),
    "whiten_rewards": TrlArgument(
        "{section}.whiten_advantages (advantages, not rewards, are whitened)", trainers=("ppo",), allowed=(False,)
    ),
    "missing_eos_penalty": TrlArgument(
        "not offered: add a reward term (verifier:length, a function)", trainers=SAMPLING, allowed=(None,)
    ),
    "stop_token": TrlArgument(
        "a response ends at the tokenizer's EOS", trainers=("ppo", "rloo"), allowed=(None, "eos")
    ),
    "stop_token_id": TrlArgument("a response ends at the tokenizer's EOS", trainers=("ppo", "rloo"), allowed=(None,)),
    "sft_model_path": TrlArgument("the trainer's model= (a folder)", trainers=("ppo", "rloo"), allowed=(None,)),
    "reward_model_path": TrlArgument(
        "the trainer's reward_model= (a folder or 'pgrad lm rm' run)", trainers=("ppo", "rloo"), allowed=(None,)
    ),
    "num_sample_generations": TrlArgument(
        "{section}.eval_every: each evaluation writes samples/step_N.jsonl", trainers=("ppo", "rloo"), allowed=(None,)
    ),
    # ---- DPO ----
    "label_smoothing": TrlArgument("DPO's sigmoid loss without smoothing", trainers=("dpo",), allowed=(0, 0.0)),
    "reference_free": TrlArgument(
        "the frozen reference: {section}.reference_model or the policy's start", trainers=("dpo",), allowed=(False,)
    ),
    "precompute_ref_log_probs": TrlArgument(
        "the reference is run beside the policy", trainers=("dpo",), allowed=(False,)
    ),
    "rpo_alpha": TrlArgument("not offered (DPO's loss alone)", trainers=("dpo",), allowed=(None,)),
    "max_length": TrlArgument(
        "{section}.max_new_tokens caps the completion; the prompt is kept whole",
        trainers=("dpo", "sft", "reward"),
        allowed=(None,),
    ),
    # ---- SFT ----
    "packing": TrlArgument("one demonstration per row", trainers=("sft",), allowed=(False,)),
    "completion_only_loss": TrlArgument(
        "the loss is on completion tokens only", trainers=("sft",), allowed=(None, True)
    ),
    "assistant_only_loss": TrlArgument(
        "rows of prompt and completion (chat rows: the last message)", trainers=("sft",), allowed=(False,)
    ),
    "dataset_text_field": TrlArgument(
        "rows of 'prompt' and 'completion' columns", trainers=("sft",), allowed=(None, "text")
    ),
    # ---- reward models ----
    "center_rewards_coefficient": TrlArgument(
        "not offered (Bradley-Terry loss alone)", trainers=("reward",), allowed=(None,)
    ),
}
# DPO's loss_type: only TRL's default sigmoid (handled by the trainer-specific check in trl_layer)
DPO_LOSS_TYPES = ("sigmoid",)


def _set_path(layer: dict[str, Any], path: str, value: Any) -> None:
    *sections, leaf = path.split(".")
    target = layer
    for section in sections:
        target = target.setdefault(section, {})
    target[leaf] = value


def _own_field(name: str, section: str) -> bool:
    """Whether ``name`` is a field of the section (a pgrad spelling given to a TRL-style config)."""
    return name in CONFIG_CLASSES[section].__dataclass_fields__


def trl_layer(trainer: str, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """TRL's keyword arguments for ``trainer`` as (a nested config layer, the values held for the trainer:
    ``output_dir``, the step and batch arguments, ``reward_weights``); an unknown name, another trainer's argument or
    a value pgrad does not offer is one ConfigError line."""
    section, advantage = TRAINERS[trainer]
    layer: dict[str, Any] = {section: {"advantage": advantage}} if advantage else {}
    held_values: dict[str, Any] = {}
    for name, value in arguments.items():
        entry = TRL_ARGUMENTS.get(name)
        if entry is None or trainer not in entry.trainers:
            if _own_field(name, section):  # pgrad's own spelling
                _set_path(layer, f"{section}.{name}", value)
                continue
            raise ConfigError(_unknown(name, trainer, section, entry))
        if trainer == "dpo" and name == "loss_type":
            if value not in DPO_LOSS_TYPES:
                raise ConfigError(f"loss_type={_short(value)} is not offered by pgrad's DPO (only 'sigmoid')")
            continue
        for path, item in entry.apply(name, value, section).items():
            if path.startswith("_trl."):
                held_values[path.removeprefix("_trl.")] = item
            else:
                _set_path(layer, path, item)
    return layer, held_values


def _unknown(name: str, trainer: str, section: str, entry: TrlArgument | None) -> str:
    """The line for a name that is not an argument of ``trainer``'s TRL config nor a field of pgrad's section."""
    cls = CONFIG_NAMES[trainer]
    if entry is not None:
        return f"{cls}: {name!r} is an argument of TRL's {', '.join(entry.trainers)} trainers, not of {cls}"
    names = [key for key, arg in TRL_ARGUMENTS.items() if trainer in arg.trainers]
    hint = difflib.get_close_matches(name, names + list(CONFIG_CLASSES[section].__dataclass_fields__), n=1)
    close = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"{cls}: {name!r} is not an argument of TRL's {cls} nor a field of pgrad's {section}{close}"


def batch_fields(trainer: str, held_values: Mapping[str, Any]) -> dict[str, Any]:
    """TRL's batch arguments as pgrad's ``batch_size`` / ``minibatch_size`` (the fields' dotted paths), TRL's defaults
    for the ones not given; nothing when none is given."""
    if not any(name in held_values for name in BATCH_ARGUMENTS):
        return {}
    section = TRAINERS[trainer][0]
    given = {name: held_values.get(name, TRL_DEFAULTS[name]) for name in BATCH_ARGUMENTS}
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int; got {_short(value)}")
    step = given["per_device_train_batch_size"] * given["gradient_accumulation_steps"]
    if trainer in ROWS:
        return {f"{section}.batch_size": step}
    return {f"{section}.batch_size": step * given["num_mini_batches"], f"{section}.minibatch_size": step}


def rows_per_optimizer_steps(steps: Any, name: str, section: Any, sampling: bool) -> int:
    """``steps`` optimizer steps as rows of the resolved ``section`` (module docstring): whole updates."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{name} must be a positive int (optimizer steps); got {_short(steps)}")
    batch = int(section.batch_size)
    per_update = section.num_epochs * (batch // section.minibatch_size) if sampling else 1
    return math.ceil(steps / per_update) * batch


def epoch_rows(epochs: Any, training_rows: int, section: Any, sampling: bool) -> int:
    """``num_train_epochs`` as ``run.total_steps``: epochs x the training rows (each prompt sampled
    ``samples_per_prompt`` times), rounded up to whole updates of ``batch_size``. pgrad draws rows uniformly with
    replacement, so an epoch is a count of rows, not a pass over each one."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 < epochs < 1e6:
        raise ConfigError(f"num_train_epochs must be a positive number; got {_short(epochs)}")
    per_row = section.samples_per_prompt if sampling else 1
    batch = int(section.batch_size)
    return max(1, math.ceil(epochs * training_rows * per_row / batch)) * batch


def step_fields(
    trainer: str, held_values: Mapping[str, Any], section: Any, training_rows: Callable[[], int] | None = None
) -> dict[str, Any]:
    """``max_steps``, ``save_steps``, ``eval_steps`` (optimizer steps) as pgrad's row counts, from the section
    resolved with every other argument (its batch and epochs); ``num_train_epochs`` (without ``max_steps``) from
    ``training_rows()``, the count of training rows."""
    sampling = trainer in SAMPLING
    out: dict[str, Any] = {}
    if "num_train_epochs" in held_values and "max_steps" not in held_values:
        if training_rows is None:
            raise ConfigError("num_train_epochs needs a data set (train_dataset); give max_steps instead")
        out["run.total_steps"] = epoch_rows(held_values["num_train_epochs"], training_rows(), section, sampling)
    paths = {"max_steps": "run.total_steps", "save_steps": "run.checkpoint_every", "eval_steps": None}
    for name, path in paths.items():
        if name in held_values:
            rows = rows_per_optimizer_steps(held_values[name], name, section, sampling)
            out[path or f"{section.SECTION}.eval_every"] = rows
    return out


# the fields the held arguments end in (for the origin of an error about one)
HELD_PATHS: dict[str, tuple[str, ...]] = {
    "per_device_train_batch_size": ("{section}.batch_size", "{section}.minibatch_size"),
    "gradient_accumulation_steps": ("{section}.batch_size", "{section}.minibatch_size"),
    "num_mini_batches": ("{section}.batch_size", "{section}.minibatch_size"),
    "max_steps": ("run.total_steps",),
    "num_train_epochs": ("run.total_steps",),
    "save_steps": ("run.checkpoint_every",),
    "eval_steps": ("{section}.eval_every",),
}


@contextmanager
def trl_names(trainer: str, arguments: Mapping[str, Any]) -> Iterator[None]:
    """A ConfigError about a field that a TRL argument set names that argument too:
    ``lm_ppo.samples_per_prompt must be a divisor of batch_size (4); got 3 (from TRL's num_generations=3)``."""
    try:
        yield
    except ConfigError as exc:
        message, section = str(exc), TRAINERS[trainer][0]
        for name, value in arguments.items():
            entry = TRL_ARGUMENTS.get(name)
            if entry is None or trainer not in entry.trainers:
                paths = [f"{section}.{name}"]  # pgrad's own spelling
            elif name in HELD_PATHS:
                paths = [path.replace("{section}", section) for path in HELD_PATHS[name]]
            else:
                paths = list(entry.apply(name, value, section))
            if any(message.startswith(f"{path} ") for path in paths):
                raise ConfigError(f"{message} (from TRL's {name}={_short(value)})") from None
        raise


# ---- the thin configs: TRL's names, read through the table -----------------------------------------------------


class TrlConfig:
    """TRL-named training arguments for one trainer (``TRAINER``), checked against ``TRL_ARGUMENTS`` when built:
    ``GRPOConfig(output_dir="runs/g", learning_rate=1e-5, num_generations=4, max_steps=20)``. ``values`` holds what
    was given; ``layer`` the pgrad config layer it makes and ``held`` the values the trainer converts."""

    TRAINER: ClassVar[str] = ""

    def __init__(self, **arguments: Any) -> None:
        self.values: dict[str, Any] = dict(arguments)
        self.layer, self.held = trl_layer(self.TRAINER, self.values)
        if self.held.get("scale_rewards") is False and self.layer.get(ALGO, {}).get("loss_type") != "dr_grpo":
            raise ConfigError(
                "scale_rewards=False: pgrad drops the group std division only with loss_type='dr_grpo' (Dr. GRPO)"
            )

    def __getattr__(self, name: str) -> Any:
        """A given argument by its name (``args.learning_rate``), as TRL's config objects offer it."""
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} was not given {name!r} (pgrad's value: trainer.args)")

    def __repr__(self) -> str:
        given = ", ".join(f"{key}={value!r}" for key, value in self.values.items())
        return f"{type(self).__name__}({given})"


class GRPOConfig(TrlConfig):
    """TRL's ``GRPOConfig`` names for ``GRPOTrainer`` (pgrad's ``lm_ppo`` with ``advantage: grpo``)."""

    TRAINER = "grpo"


class RLOOConfig(TrlConfig):
    """TRL's ``RLOOConfig`` names (old and new) for ``RLOOTrainer`` (``lm_ppo`` with ``advantage: rloo``)."""

    TRAINER = "rloo"


class PPOConfig(TrlConfig):
    """TRL's ``PPOConfig`` names for ``PPOTrainer`` (``lm_ppo`` with ``advantage: gae``)."""

    TRAINER = "ppo"


class DPOConfig(TrlConfig):
    """TRL's ``DPOConfig`` names for ``DPOTrainer`` (``lm_dpo``)."""

    TRAINER = "dpo"


class SFTConfig(TrlConfig):
    """TRL's ``SFTConfig`` names for ``SFTTrainer`` (``lm_sft``)."""

    TRAINER = "sft"


class RewardConfig(TrlConfig):
    """TRL's ``RewardConfig`` names for ``RewardTrainer`` (``lm_rm``)."""

    TRAINER = "reward"


CONFIG_NAMES = {
    "grpo": "GRPOConfig",
    "rloo": "RLOOConfig",
    "ppo": "PPOConfig",
    "dpo": "DPOConfig",
    "sft": "SFTConfig",
    "reward": "RewardConfig",
}

# the trainers' constructor arguments (TRL's names), for the table; pgrad.lm.trainers implements them
CONSTRUCTOR_ARGUMENTS: dict[str, tuple[str, str, str]] = {  # name -> (trainers, pgrad spelling, what it takes)
    "model": ("all", "SECTION.model", "a model folder (config.json, safetensors, tokenizer); None: the tiny GPT-2"),
    "args": ("all", "SECTION", "the TRL-named config (GRPOConfig...) or pgrad's section (LMPPOConfig...)"),
    "train_dataset": ("all", "SECTION.dataset", "a .jsonl/.csv/.parquet file, a save_to_disk folder, a list of dicts "
                      "or a datasets.Dataset (rows in memory are written to RUN_DIR.data/)"),
    "eval_dataset": ("all", "SECTION.eval_dataset", "the same forms; None: eval_fraction of train_dataset held out"),
    "reward_funcs": ("grpo, rloo, ppo", "lm_ppo.reward", "callables f(prompts, completions, **columns), "
                     "'verifier:NAME', 'module:function' (with trust_reward_code=True), a reward-model folder"),
    "reward_model": ("grpo, rloo, ppo", "lm_ppo.reward_model", "a sequence-classification folder or 'pgrad lm rm' run"),
    "ref_model": ("grpo, rloo, ppo, dpo", "SECTION.reference_model", "a model folder (None: the policy's start)"),
    "value_model": ("ppo", "lm_ppo.value_model", "a model folder, or 'reward_model'"),
    "peft_config": ("grpo, rloo, ppo", "lm_ppo.lora_rank, lm_ppo.lora_alpha", "a peft LoraConfig (its r, lora_alpha)"),
    "callbacks": ("all", "pgrad.callbacks.BaseCallback", "callbacks (or functions of the row): see below"),
    "processing_class": ("all", "model=", "refused: the tokenizer is the model folder's"),
}  # fmt: skip


def markdown_table() -> str:
    """The TRL -> pgrad table of ``docs/lm-python-api.md``: the constructor's arguments, then every config argument
    with the trainers that have it, its pgrad spelling, and the values accepted where it is not mapped."""
    lines = ["| TRL | trainers | pgrad | notes |", "|---|---|---|---|"]
    for name, (trainers, spelling, what) in CONSTRUCTOR_ARGUMENTS.items():
        lines.append(f"| `{name}=` (constructor) | {trainers} | `{spelling}` | {what} |")
    for name, entry in TRL_ARGUMENTS.items():
        trainers = "all" if entry.trainers == ALL else ", ".join(entry.trainers)
        if entry.convert is not None:
            pgrad, note = f"`{entry.pgrad}`", entry.note
        else:
            shown = ", ".join(f"`{value!r}`" for value in entry.allowed)
            pgrad, note = entry.pgrad, f"accepted: {shown} (else refused)" if shown else "refused"
        lines.append(f"| `{name}` | {trainers} | {pgrad} | {note} |".replace("{section}", section_word(entry)))
    return "\n".join(lines) + "\n"


def section_word(entry: TrlArgument) -> str:
    """How the table names the section of an argument: lm_ppo, lm_dpo... or 'SECTION' for several."""
    sections = {TRAINERS[trainer][0] for trainer in entry.trainers}
    return sections.pop() if len(sections) == 1 else "SECTION"
