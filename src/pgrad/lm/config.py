"""The ``lm_ppo``, ``lm_rm``, ``lm_sft`` and ``lm_dpo`` config sections and their defaults for the shared ones.

An LM run is a ``TrainConfig`` like any other, resolved and read back by the same ``pgrad.runs`` as every
algorithm (the registry names these classes): ``algo: lm_ppo``, ``lm_rm``, ``lm_sft`` or ``lm_dpo``, the
shared ``run`` section (``run.total_steps`` counts sampled responses for PPO, trained preference pairs for
the reward model and DPO, demonstrations for SFT), the algorithm's section below, and an ``env`` section
whose ``id`` names the task (``digits``). Precedence: defaults < ``RUN_DEFAULTS`` (and lm_ppo's
``LM_GUARD_DEFAULTS``) < ``--config`` file < ``--set`` < flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pgrad import glossary
from pgrad.config import MAX_BATCH, MAX_HIDDEN_WEIGHTS, MAX_WINDOW, Checked, OptimizerConfig, param
from pgrad.errors import ConfigError
from pgrad.lm.reward_spec import RewardTerm, VerifierConfig, canonical_reward
from pgrad.lm.reward_spec import reward_terms as read_reward_terms

ALGO = "lm_ppo"
RM_ALGO = "lm_rm"
SFT_ALGO = "lm_sft"
DPO_ALGO = "lm_dpo"

# Bounds of the LM size fields (see pgrad.config's MAX_* for why a config needs them): the model, and the data
# sets each command generates up front (demonstrations, preference pairs) and holds in memory.
MAX_LM_LAYERS = 64
MAX_LM_WIDTH = 4096
MAX_LM_DATA = 2**20  # demonstrations or preference pairs generated and held in memory
GROUP_SIZE = 8  # rloo and grpo: responses per prompt unless samples_per_prompt says (TRL's num_generations)


@dataclass(frozen=True)
class LMModelConfig(Checked):
    """The model a language-model section trains (its ``model:`` section): a Hugging Face model folder
    (``path``; ``--set model=DIR`` is short for ``model.path=DIR``, see ``pgrad.lm.folders``), else the
    built-in tiny GPT-2 of ``n_layer`` blocks, ``n_embd`` wide, ``n_head`` heads. PPO and DPO starting from an
    SFT model (``init_from``) must name the same one. ``precision`` and ``gradient_checkpointing`` say how the run
    computes on ``run.device`` (``pgrad.lm.precision.DeviceSetup``; one declaration for every LM section)."""

    SECTION: ClassVar[str] = "model"

    path: str | None = param(
        None,
        "a Hugging Face model folder (config.json, model.safetensors, tokenizer; no remote code, no pickle "
        "weights); None: the built-in tiny GPT-2 below, on the digits task",
    )
    n_layer: int = param(2, "GPT-2 blocks (the built-in model)")
    n_embd: int = param(64, "GPT-2 width (the built-in model)")
    n_head: int = param(4, "attention heads; must divide n_embd (the built-in model)")
    precision: Literal["fp32", "bf16", "fp16"] = param(
        "fp32",
        "the run's forward passes (policy, reference, value and reward models; docs/lm-devices.md): fp32; bf16 "
        "autocast (CPU, or CUDA from Ampere on); fp16 autocast with loss scaling (run.device cuda only). Weights, "
        "optimizer moments and checkpoints stay float32",
    )
    gradient_checkpointing: bool = param(
        False, "recompute the trained models' activations in backward (less memory, about one more forward pass)"
    )

    def validate(self) -> None:
        """Checks the model size: n_head divides n_embd, and 12 x n_layer x n_embd^2 block weights stay within
        ``MAX_HIDDEN_WEIGHTS``. A model folder's size is its own."""
        if self.path is not None and not self.path:
            self._fail("path", "a model folder, or null for the built-in GPT-2")
        self.check_range("n_layer", 1, MAX_LM_LAYERS)
        self.check_range("n_embd", 1, MAX_LM_WIDTH)
        self.check_range("n_head", 1, self.n_embd)
        if self.n_embd % self.n_head:
            self._fail("n_head", f"a divisor of n_embd ({self.n_embd})")
        # a GPT-2 block holds 12 x n_embd^2 weights (attention 4, MLP 8)
        if 12 * self.n_layer * self.n_embd**2 > MAX_HIDDEN_WEIGHTS:
            self._fail("n_embd", f"small enough for 12 x n_layer x n_embd^2 <= {MAX_HIDDEN_WEIGHTS} block weights")


def lm_optimizer(eps: float, what: str) -> Any:
    """The ``optimizer:`` field of a language-model section: the shared ``OptimizerConfig`` (Adam at 1e-3; the
    ``eps`` each trainer has always used), with a constant learning rate (``anneal_lr`` is refused)."""
    return param(OptimizerConfig(learning_rate=1e-3, eps=eps), f"{what}: Adam, lr 1e-3, eps {eps:g}")


class FolderShorthand:
    """``model: DIR`` (``--set model=DIR``) is short for ``model: {path: DIR}``: a language-model section's
    ``model`` given as text is a model folder (the issue's surface name; ``model.path`` is the field)."""

    def __post_init__(self) -> None:
        model = getattr(self, "model", None)
        if isinstance(model, str):
            object.__setattr__(self, "model", {"path": model})
        super().__post_init__()  # type: ignore[misc]


def data_fields(kind: str) -> Any:
    """The ``dataset`` field of a language-model section: a file or folder of ``kind`` rows (``pgrad.lm.data``)."""
    return param(
        None,
        f"a data set of {kind} (.jsonl, .csv, .parquet or a datasets save_to_disk folder; needs model: a model "
        "folder); None: the digits task's own",
    )


EVAL_DATASET_DOC = "the held-out data set for the evaluations (same format); None: eval_fraction of dataset"
EVAL_FRACTION_DOC = (
    "without eval_dataset: this fraction of dataset's rows (at least 1) is held out by a shuffle seeded by "
    "run.seed, never trained on (0: evaluate on the training rows)"
)


def check_shared_sections(section: Checked, optimizer: OptimizerConfig) -> None:
    """The checks every language-model section shares (its model is checked by ``LMModelConfig``): the model
    folder and the data set go together (the built-in GPT-2 reads the digits task, a folder's model a data set)."""
    section.check_range("max_grad_norm", 0, low_open=True)
    section.check_range("eval_fraction", 0, 1, high_open=True)
    model: LMModelConfig = getattr(section, "model")  # noqa: B009 - every LM section has one
    dataset = getattr(section, "dataset")  # noqa: B009
    if dataset is not None and model.path is None:
        section._fail("dataset", "null with the built-in GPT-2 (it knows only the digits vocabulary); set model=DIR")
    if model.path is not None and dataset is None:
        raise ConfigError(
            f"{section.SECTION}.dataset must be a data set when model is a folder (the digits task is for the "
            "built-in GPT-2); got None"
        )
    if getattr(section, "eval_dataset") is not None and dataset is None:  # noqa: B009
        section._fail("eval_dataset", "null without dataset")
    if optimizer.anneal_lr:  # the LM loops set one rate (times the guard's cut) for the whole run
        raise ConfigError(
            f"{section.SECTION}.optimizer.anneal_lr must be false (LM runs keep a constant rate); got True"
        )


@dataclass(frozen=True)
class LMPPOConfig(FolderShorthand, Checked):
    """PPO on a causal language model with a per-token KL penalty to the frozen initial weights."""

    SECTION: ClassVar[str] = ALGO

    task: Literal["digits"] = param("digits", "the shipped task: prompts and a hidden true score")
    dataset: str | None = data_fields("prompts (a 'prompt' column; the other columns go to the reward)")
    eval_dataset: str | None = param(None, EVAL_DATASET_DOC)
    eval_fraction: float = param(0.1, EVAL_FRACTION_DOC)
    reward: str | bool | dict[str, Any] | tuple[str | bool | dict[str, Any], ...] = param(
        "true_score",
        "what scores a response (docs/lm-rewards.md): 'model' the reward model of reward_model; 'true_score' (or "
        "true) the task's hidden score (a perfect reward model); 'verifier:exact_answer' | regex | format | length; "
        "'module:function' a Python function (needs --trust-reward-code); or a list of them, each a string or "
        "{reward: ..., weight: W, name: N}, summed with their weights and each logged as reward/<name>",
    )
    verifier: VerifierConfig = param(
        VerifierConfig(), "the built-in verifiers' options (a reward list's term may override)"
    )
    reward_model: str | None = param(
        None,
        "with reward: model, the run folder of 'pgrad lm rm' (its best checkpoint), or a Hugging Face "
        "sequence-classification model folder (num_labels 1) with the policy's tokenizer",
    )
    reference_model: str | None = param(
        None,
        "the frozen reference: a causal LM model folder with the policy's tokenizer (None: a frozen copy of the "
        "policy's start; under LoRA the policy with its adapter switched off)",
    )
    value_model: str | None = param(
        None,
        "advantage gae: the critic; None: the value head on the policy (critic: shared or separate); a model "
        "folder: a separate critic on that folder's trunk; 'reward_model': a separate critic initialised from the "
        "reward model (as init_value_from_rm)",
    )
    init_from: str | None = param(
        None,
        "the run folder of 'pgrad lm sft': policy and reference start from its best checkpoint (None: the tiny "
        "GPT-2's random initial weights)",
    )
    advantage: Literal["gae", "rloo", "grpo"] = param(
        "gae",
        "gae: PPO with the value head (per-token KL in the reward, GAE over tokens); rloo / grpo: no critic, "
        "samples_per_prompt responses per prompt, one advantage per response from its group (leave-one-out / "
        "group-normalised) under the same clipped surrogate ('pgrad lm grpo' is this with advantage grpo)",
    )
    kl_penalty: Literal["auto", "reward", "loss"] = param(
        "auto",
        "reward: -kl_coef x KL in the reward (per token for gae, summed per response for rloo/grpo, where grpo then "
        "divides it by the group's std with the score); loss: kl_coef x k3(pi, ref) per token in the loss, "
        "aggregated as loss_type says, GRPO's form (rloo and grpo only); auto: loss for grpo, reward otherwise",
    )
    loss_type: Literal["auto", "token_mean", "sequence_mean", "dr_grpo"] = param(
        "auto",
        "how per-token losses become one (pgrad.lm.losses.aggregate_token_loss): token_mean (DAPO: over all "
        "tokens), sequence_mean (GRPO paper: per response, then over responses), dr_grpo (Dr. GRPO: summed, over "
        "rows x max_new_tokens, and grpo's advantages not divided by the group std); auto: sequence_mean for "
        "grpo, token_mean otherwise",
    )
    critic: Literal["shared", "separate"] = param(
        "shared",
        "gae: the value head on the policy's last hidden layer (shared: one trunk) or on a GPT-2 trunk of its own "
        "(separate: a second forward pass, and the value loss cannot pull on the policy's weights)",
    )
    init_value_from_rm: bool = param(
        False,
        "InstructGPT: the separate critic's trunk and value head start as the reward model's (the first member of "
        "an ensemble); needs critic: separate, reward: model and a reward model of this model's shape",
    )
    lora_rank: int = param(
        0,
        "train a LoRA adapter of this rank on the attention and MLP projections (needs peft) instead of every "
        "weight; the reference is the same model with its adapter switched off, not a second copy (0: off)",
    )
    lora_alpha: int = param(16, "LoRA scaling alpha (the update is alpha / lora_rank x B A)")
    samples_per_prompt: int = param(
        0, "responses per prompt, a divisor of batch_size (at least 2 for rloo and grpo; 0: 1 for gae, 8 otherwise)"
    )
    max_new_tokens: int = param(8, "longest response in tokens (a response ends earlier at its EOS)")
    batch_size: int = param(64, "responses per rollout (batch_size / samples_per_prompt prompts)")
    minibatch_size: int = param(16, "responses per gradient step; must divide batch_size")
    num_epochs: int = param(4, "passes over each rollout (the first in rollout order, later ones shuffled)")
    temperature: float = param(1.0, "sampling temperature; log-probs are taken of the same tempered distribution")
    gamma: float = glossary.gamma(1.0, "over tokens")
    gae_lambda: float = glossary.gae_lambda(0.95, "over tokens")
    clip_eps: float = glossary.clip_eps(0.2)
    clip_vf: float = param(0.2, "value clip range around the rollout's values")
    vf_coef: float = glossary.vf_coef(0.05, "as in the RL sections")
    whiten_advantages: bool = param(True, "gae: whiten advantages over the rollout's real tokens")
    kl_coef: float = param(0.05, "initial coefficient beta of the per-token KL penalty beta (log pi - log pi_ref)")
    kl_target: float | None = param(
        None, "adaptive KL controller (Ziegler et al.): steer the mean per-response KL toward this (None: fixed)"
    )
    kl_horizon: int = param(10_000, "adaptive KL controller horizon, in responses")
    eval_every: int = param(
        1024, "evaluate on held-out prompts every this many responses, at the start and at the end (0: off)"
    )
    eval_prompts: int = param(256, "held-out prompts per evaluation (the same prompts and noise every time)")
    kl_alert: float | None = param(
        25.0, "critical.lm_kl event when the mean per-response KL to the reference exceeds this (None: off)"
    )
    hacking_window: int = param(
        10, "updates of the reward-hacking rule: the mean of their later half against that of their earlier half"
    )
    hacking_drop: float = param(
        0.08,
        "warning.lm_reward_hacking when the true score falls by more than this while the RM score rises (digits, "
        "batch 64: the half-window means of a healthy run differ by up to 0.05)",
    )
    check_reward: str | bool | dict[str, Any] | tuple[str | bool | dict[str, Any], ...] | None = param(
        None,
        "a held-out check of the optimised reward (docs/lm-rewards.md): the same forms as reward ('model' here is "
        "check_reward_model), never optimised, logged as lm/check_score and eval/check_score; the hacking rules "
        "compare it with the optimised reward and it ranks the best checkpoint. None: no check (the guard reads KL, "
        "ensemble disagreement, length and degeneration; the digits task's true score only when named here)",
    )
    check_reward_model: str | None = param(
        None, "with a 'model' term in check_reward: a second reward model (a 'pgrad lm rm' run or a model folder)"
    )
    degeneration_floor: float | None = param(
        None,
        "warning.lm_degeneration when lm/distinct_2 (distinct bigrams per bigram in the batch) falls below this x "
        "its first value (None: off; on the digits task repeating a large digit is the optimum, not a hack)",
    )
    hacking_kl_boost: float = param(
        2.0,
        "after a rollback on reward hacking the KL coefficient is multiplied by this (1: unchanged), so the restored "
        "policy does not walk back into the same hack; guard.max_recoveries rollbacks later the run stops",
    )
    hacking_z: float = param(
        3.0,
        "the reward-hacking rule's fall must also exceed this many standard errors of the difference of the two "
        "half-window means, from their rows' spread (0: off); batches of few prompts (rloo, grpo) swing more",
    )
    length_collapse: float | None = param(
        0.25, "warning.lm_length_collapse when the mean response length falls below this x its first value (None: off)"
    )
    length_explosion: float | None = param(
        None,
        "warning.lm_length_explosion when the mean response length rises above this x its first value (None: off; "
        "the digits task rewards long responses)",
    )
    rollback_on_alert: bool = param(
        True,
        "with guard.enabled: KL past kl_alert, reward hacking and a length collapse or explosion are critical and "
        "roll back to the last healthy state in memory with a learning-rate cut (guard.lr_cut); False: they report",
    )
    ensemble_combine: Literal["min", "mean_minus_std"] = param(
        "min",
        "with reward: model and an ensemble (lm_rm.ensemble_size > 1): min of the members' scores, or their mean "
        "minus ensemble_k x their std (one member: its own score either way)",
    )
    ensemble_k: float = param(1.0, "the k of ensemble_combine: mean_minus_std")
    disagreement_rise: float | None = param(
        3.0,
        "warning.lm_rm_disagreement when the ensemble's mean disagreement (std across members) over the later half "
        "of hacking_window rises above this x its early level (the first hacking_window // 2 updates; None: off)",
    )
    optimizer: OptimizerConfig = lm_optimizer(1e-5, "policy and value head")
    max_grad_norm: float = glossary.max_grad_norm(1.0)
    model: LMModelConfig = param(LMModelConfig(), "the tiny GPT-2 of the policy (and of a separate critic)")
    version: int = param(
        2,
        "the conventions this section is written in: 2, vf_coef weighs mean((V - R)^2); 1 (run folders from before "
        "this field), it weighed 0.5 x mean((V - R)^2) and is halved on reading (pgrad.algos.upgrade)",
    )

    def validate(self) -> None:
        """Checks each field's range and the combinations allowed: the reward model for reward 'model', the critic
        and KL penalty per advantage, LoRA sizes, and batch divisors."""
        self.check_range("version", 2, 2)
        self.resolve_auto()
        if self.uses_reward_model and not self.reward_model:
            self._fail("reward_model", "the run folder of 'pgrad lm rm' when reward is 'model'")
        self.check_range("max_new_tokens", 1, 256)
        self.check_range("batch_size", 1, MAX_BATCH)
        if self.critic == "separate" and self.advantage != "gae":
            self._fail("critic", "'shared' with advantage 'rloo' or 'grpo' (they train no critic)")
        if self.init_value_from_rm and (self.critic != "separate" or not self.uses_reward_model):
            self._fail("init_value_from_rm", "false unless critic is 'separate' and reward is 'model'")
        self.check_folder_fields()
        self.check_check_reward()
        self.check_range("lora_rank", 0, self.model.n_embd if self.model.path is None else MAX_LM_WIDTH)
        self.check_range("lora_alpha", 0, low_open=True)
        if self.advantage == "gae" and self.kl_penalty != "reward":
            self._fail("kl_penalty", "'reward' with advantage 'gae' (the per-token KL is part of the reward GAE sums)")
        if self.loss_type == "dr_grpo" and self.advantage != "grpo":
            self._fail("loss_type", "'token_mean' or 'sequence_mean' unless advantage is 'grpo'")
        self.check_range("samples_per_prompt", 2 if self.advantage != "gae" else 1, self.batch_size)
        if self.batch_size % self.samples_per_prompt:
            self._fail("samples_per_prompt", f"a divisor of batch_size ({self.batch_size})")
        self.check_range("minibatch_size", 1, self.batch_size)
        if self.batch_size % self.minibatch_size:
            self._fail("minibatch_size", f"a divisor of batch_size ({self.batch_size})")
        self.check_range("num_epochs", 1, 1000)
        self.check_range("temperature", 0, low_open=True)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("clip_eps", 0, 1, low_open=True)
        self.check_range("clip_vf", 0, low_open=True)
        self.check_range("vf_coef", 0)
        self.check_range("kl_coef", 0)
        self.check_range("kl_target", 0, low_open=True)
        self.check_range("kl_horizon", 1)
        self.check_range("eval_every", 0)
        self.check_range("eval_prompts", 1, MAX_BATCH)
        self.check_range("kl_alert", 0, low_open=True)
        self.check_range("hacking_window", 2, MAX_WINDOW)
        self.check_range("hacking_drop", 0)
        self.check_range("hacking_z", 0)
        self.check_range("degeneration_floor", 0, 1, low_open=True, high_open=True)
        self.check_range("hacking_kl_boost", 1, 100)
        self.check_range("length_collapse", 0, 1, low_open=True, high_open=True)
        self.check_range("length_explosion", 1, low_open=True)
        self.check_range("ensemble_k", 0)
        self.check_range("disagreement_rise", 1, low_open=True)
        check_shared_sections(self, self.optimizer)

    def resolve_auto(self) -> None:
        """Fills the fields whose default depends on ``advantage`` (``samples_per_prompt``, ``kl_penalty``,
        ``loss_type``: GRPO's are the paper's) and reads ``reward`` into its canonical form and terms: the config
        keeps and saves the resolved values, so a run folder says what ran."""
        grpo = self.advantage == "grpo"
        defaults = {  # what "auto" (0 for samples_per_prompt) stands for
            "samples_per_prompt": 1 if self.advantage == "gae" else GROUP_SIZE,
            "kl_penalty": "loss" if grpo else "reward",
            "loss_type": "sequence_mean" if grpo else "token_mean",
        }
        for key, default in defaults.items():
            if getattr(self, key) in ("auto", 0):
                object.__setattr__(self, key, default)
        object.__setattr__(self, "reward", canonical_reward(self.reward))
        object.__setattr__(self, "_terms", read_reward_terms(self.reward, self.verifier, self._name("reward")))
        check: tuple[RewardTerm, ...] = ()
        if self.check_reward is not None:
            object.__setattr__(self, "check_reward", canonical_reward(self.check_reward))
            check = read_reward_terms(self.check_reward, self.verifier, self._name("check_reward"))
        object.__setattr__(self, "_check_terms", check)

    @property
    def reward_terms(self) -> tuple[RewardTerm, ...]:
        """The terms of ``reward`` (``pgrad.lm.reward_spec``), checked when the config was built."""
        terms: tuple[RewardTerm, ...] = self.__dict__["_terms"]
        return terms

    @property
    def check_terms(self) -> tuple[RewardTerm, ...]:
        """The terms of ``check_reward`` (none without one), checked when the config was built."""
        terms: tuple[RewardTerm, ...] = self.__dict__["_check_terms"]
        return terms

    @property
    def code_terms(self) -> tuple[RewardTerm, ...]:
        """Every term that may name code to import (``reward`` and ``check_reward``): the trust check reads these."""
        return self.reward_terms + self.check_terms

    @property
    def uses_reward_model(self) -> bool:
        """Whether a term of ``reward`` is the reward model of ``reward_model``."""
        return any(term.kind == "model" for term in self.reward_terms)

    def check_check_reward(self) -> None:
        """``check_reward``: a 'model' term needs ``check_reward_model`` (a second one: the optimised reward model
        cannot check itself), and a data set has no true score to check with."""
        if any(term.kind == "model" for term in self.check_terms) and not self.check_reward_model:
            self._fail("check_reward_model", "a second reward model's folder when check_reward has a 'model' term")
        if self.check_reward_model is not None and not any(term.kind == "model" for term in self.check_terms):
            self._fail("check_reward_model", "null unless check_reward has a 'model' term")
        if self.dataset is not None and any(term.kind == "true_score" for term in self.check_terms):
            self._fail("check_reward", "a check other than 'true_score' with a data set (the digits task's score)")

    def check_folder_fields(self) -> None:
        """The model-folder fields: a data set's prompts have no true score, and a reference or value model
        from a folder reads the policy's token ids, so it needs a policy from a folder too."""
        if self.dataset is not None and any(term.kind == "true_score" for term in self.reward_terms):
            self._fail(
                "reward", "a reward other than 'true_score' with a data set (it is the digits task's hidden score)"
            )
        for name in ("reference_model", "value_model"):
            if getattr(self, name) is not None and self.model.path is None:
                self._fail(name, "null with the built-in GPT-2 (a folder's model reads a folder's tokens)")
        if self.value_model is not None and self.advantage != "gae":
            self._fail("value_model", "null with advantage 'rloo' or 'grpo' (they train no critic)")
        if self.value_model == "reward_model" and not self.uses_reward_model:
            self._fail("value_model", "a model folder or null unless reward is 'model'")
        if self.value_model is not None and self.init_value_from_rm:
            self._fail("init_value_from_rm", "false with value_model (value_model: reward_model says the same)")


@dataclass(frozen=True)
class LMRewardModelConfig(FolderShorthand, Checked):
    """A reward model trained on the task's synthetic preference pairs (Bradley-Terry); ``run.total_steps``
    counts the pairs trained on (minibatches drawn uniformly, with replacement, from the training pairs)."""

    SECTION: ClassVar[str] = RM_ALGO

    task: Literal["digits"] = param("digits", "the shipped task whose hidden score makes the preferences")
    dataset: str | None = data_fields("preference pairs ('prompt', 'chosen', 'rejected' columns)")
    eval_dataset: str | None = param(None, EVAL_DATASET_DOC)
    eval_fraction: float = param(0.1, EVAL_FRACTION_DOC)
    max_new_tokens: int = param(8, "longest response scored; PPO's max_new_tokens may not exceed it")
    train_pairs: int = param(4096, "preference pairs to train on (ties are dropped: slightly fewer)")
    heldout_pairs: int = param(1024, "fresh pairs, never trained on, for the held-out accuracy (ties dropped)")
    batch_size: int = param(64, "pairs per gradient step")
    eval_every: int = param(2048, "held-out accuracy every this many trained pairs, and at the end")
    optimizer: OptimizerConfig = lm_optimizer(1e-8, "each member's")
    max_grad_norm: float = glossary.max_grad_norm(1.0)
    model: LMModelConfig = param(LMModelConfig(), "the reward model's GPT-2 trunk")
    ensemble_size: int = param(
        1,
        "reward models trained side by side, each from its own initial weights on its own bootstrap resample of "
        "the training pairs (1: one model on the pairs themselves)",
    )
    proxy_weight: float = param(
        0.0,
        "a drill for the hacking guard (digits only): the pairs are labelled by (1 - w) x true score + w x echo, "
        "echo = the share of response digits equal to the prompt's last digit (worth 0 to the true score): "
        "a reward model that favours a proxy. 0: labels by the true score",
    )

    def validate(self) -> None:
        """Checks the ranges of the pairs, ensemble, batch and evaluation, and the checks every LM section shares."""
        self.check_range("max_new_tokens", 1, 256)
        self.check_range("ensemble_size", 1, 16)
        self.check_range("proxy_weight", 0, 1)
        if self.proxy_weight > 0 and self.dataset is not None:
            self._fail("proxy_weight", "0 with a dataset (the drill relabels the digits task's own pairs)")
        self.check_range("train_pairs", 2, MAX_LM_DATA)
        self.check_range("heldout_pairs", 2, MAX_LM_DATA)
        self.check_range("batch_size", 1, MAX_BATCH)
        self.check_range("eval_every", 1)
        check_shared_sections(self, self.optimizer)


@dataclass(frozen=True)
class LMSFTConfig(FolderShorthand, Checked):
    """Supervised fine-tuning on the task's demonstrations; ``run.total_steps`` counts demonstrations trained
    on (minibatches drawn uniformly, with replacement). ``lm_ppo.init_from`` starts PPO from the result."""

    SECTION: ClassVar[str] = SFT_ALGO

    task: Literal["digits"] = param("digits", "the shipped task whose hidden score picks the demonstrations")
    dataset: str | None = data_fields("demonstrations ('prompt' and 'completion' columns)")
    eval_dataset: str | None = param(None, EVAL_DATASET_DOC)
    eval_fraction: float = param(0.1, EVAL_FRACTION_DOC)
    max_new_tokens: int = param(8, "longest demonstration; PPO starting from this model must use the same")
    demonstrations: int = param(4096, "demonstrations to train on: per prompt the best of 4 random responses")
    heldout_demonstrations: int = param(512, "fresh demonstrations for the held-out log-likelihood")
    batch_size: int = param(64, "demonstrations per gradient step")
    eval_every: int = param(2048, "held-out metrics every this many demonstrations, and at the end")
    eval_prompts: int = param(256, "held-out prompts for the sampled true score and KL to the initial weights")
    optimizer: OptimizerConfig = lm_optimizer(1e-8, "the model's")
    max_grad_norm: float = glossary.max_grad_norm(1.0)
    model: LMModelConfig = param(LMModelConfig(), "the tiny GPT-2")

    def validate(self) -> None:
        """Checks the ranges of the demonstrations, batch and evaluation, and the checks every LM section shares."""
        self.check_range("max_new_tokens", 1, 256)
        self.check_range("demonstrations", 1, MAX_LM_DATA)
        self.check_range("heldout_demonstrations", 1, MAX_LM_DATA)
        self.check_range("batch_size", 1, MAX_BATCH)
        self.check_range("eval_every", 1)
        self.check_range("eval_prompts", 1, MAX_BATCH)
        check_shared_sections(self, self.optimizer)


@dataclass(frozen=True)
class LMDPOConfig(FolderShorthand, Checked):
    """Direct Preference Optimization on the task's synthetic preference pairs (the reward model's pairs),
    no reward model and no sampling in the loop; ``run.total_steps`` counts the pairs trained on."""

    SECTION: ClassVar[str] = DPO_ALGO

    task: Literal["digits"] = param("digits", "the shipped task whose hidden score makes the preferences")
    dataset: str | None = data_fields("preference pairs ('prompt', 'chosen', 'rejected' columns)")
    eval_dataset: str | None = param(None, EVAL_DATASET_DOC)
    eval_fraction: float = param(0.1, EVAL_FRACTION_DOC)
    reference_model: str | None = param(
        None, "the frozen reference: a causal LM model folder with the policy's tokenizer (None: the policy's start)"
    )
    init_from: str | None = param(
        None,
        "the run folder of 'pgrad lm sft': policy and frozen reference start from its best checkpoint (None: the "
        "tiny GPT-2's random initial weights)",
    )
    beta: float = param(0.1, "DPO's beta: the implicit reward is beta x (log pi - log pi_ref) of the response")
    max_new_tokens: int = param(8, "longest response; must equal the SFT model's with init_from")
    train_pairs: int = param(4096, "preference pairs to train on (ties are dropped: slightly fewer)")
    heldout_pairs: int = param(1024, "fresh pairs, never trained on, for the implicit reward's held-out accuracy")
    batch_size: int = param(64, "pairs per gradient step")
    eval_every: int = param(2048, "held-out metrics every this many trained pairs, at the start and at the end")
    eval_prompts: int = param(256, "held-out prompts for the sampled true score, KL to the reference and length")
    optimizer: OptimizerConfig = lm_optimizer(1e-8, "the model's")
    max_grad_norm: float = glossary.max_grad_norm(1.0)
    model: LMModelConfig = param(LMModelConfig(), "the tiny GPT-2")

    def validate(self) -> None:
        """Checks beta and the ranges of the pairs, batch and evaluation, and the checks every LM section shares."""
        self.check_range("beta", 0, low_open=True)
        self.check_range("max_new_tokens", 1, 256)
        self.check_range("train_pairs", 2, MAX_LM_DATA)
        self.check_range("heldout_pairs", 2, MAX_LM_DATA)
        self.check_range("batch_size", 1, MAX_BATCH)
        self.check_range("eval_every", 1)
        self.check_range("eval_prompts", 1, MAX_BATCH)
        check_shared_sections(self, self.optimizer)


CONFIG_CLASSES: dict[str, type[Checked]] = {
    ALGO: LMPPOConfig,
    RM_ALGO: LMRewardModelConfig,
    SFT_ALGO: LMSFTConfig,
    DPO_ALGO: LMDPOConfig,
}
# The guard section's defaults for PPO on a language model. approx KL (per token, mean over the minibatches): a
# healthy PPO from the SFT model on the reward model (the CI pipeline, seed 3) peaks at 0.11 (median 0.015); an
# lr_spike drill (x100) reaches 0.81 (seed 3, from random weights); the RL levels (0.05 / 0.1) would roll a
# healthy run back. The guard's own evaluations (eval_every) are for environments: lm_ppo.eval_every evaluates
# the language model. A healthy state is captured every 128 responses (2 updates at batch 64): a capture
# clones ~0.1M weights and Adam moments.
LM_GUARD_DEFAULTS: dict[str, Any] = {
    "kl_warning": 0.2,
    "kl_critical": 0.4,
    "eval_every": 0,
    "snapshot_every": 128,
}
# run-section defaults per command, sized for the tiny model on 2 CPU cores (the shared ones count env steps)
RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    ALGO: {"total_steps": 4096, "checkpoint_every": 1024, "tensorboard": False},
    RM_ALGO: {"total_steps": 16384, "checkpoint_every": 4096, "tensorboard": False},
    SFT_ALGO: {"total_steps": 8192, "checkpoint_every": 4096, "tensorboard": False},
    DPO_ALGO: {"total_steps": 8192, "checkpoint_every": 4096, "tensorboard": False},
}
