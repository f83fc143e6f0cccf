"""Causal language models for RLHF: the tiny GPT-2, the policy with its value head, the reward model,
per-token log-probs of a response, and sampling with a KV cache.

Sequences are laid out as ``[prompt | response]``: the prompt left-padded to ``P`` columns, the response
right-padded to ``R`` columns, one attention mask over both. Position ids count real tokens only
(``cumsum(mask) - 1``), so a prompt's left padding changes no logit of its row: padding and batch
composition leave every row's numbers as they are (up to float rounding of batched matmuls).

This module imports ``transformers`` (the ``lm`` extra); nothing outside ``pgrad.lm`` does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from pgrad.lm.losses import last_token_index, token_logprobs

# The causal language model a run trains: the name the loops use, so that only pgrad.lm imports transformers. The
# built-in GPT-2's class; a model folder's (pgrad.lm.folders) is whatever transformers builds, with the same calls.
CausalLM = GPT2LMHeadModel


def tiny_gpt2_config(
    vocab_size: int, n_positions: int, n_layer: int = 2, n_embd: int = 64, n_head: int = 4
) -> GPT2Config:
    """A GPT-2 of ``n_layer`` blocks of width ``n_embd``, every dropout off: with dropout on, the log-probs
    of the same tokens differ between the rollout and the update, and PPO's ratio is not 1 where it must be
    (the N implementation details, #3)."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
    )


def hidden_size(model: nn.Module) -> int:
    """The width of a transformers model's hidden states (its config's ``hidden_size``; GPT-2's ``n_embd``)."""
    config: Any = getattr(model, "config")  # noqa: B009 - every transformers model has one
    return int(config.hidden_size)


def position_ids(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, ... over the real tokens of each row (left padding gets 0 and is masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyWithValue(nn.Module):
    """The causal LM and a scalar value head: on the LM's last hidden layer (one trunk, one model), or with
    ``separate_critic`` on a GPT-2 trunk of its own (the critic then shares no weight with the policy, as in
    InstructGPT, whose value function starts from the reward model: ``init_value_from``).

    ``value_head`` reads the hidden state at each position: the value of the response *before* the next
    token, matching the logits there. It is initialised to zero, so the first values are 0 and the first
    value loss is the plain mean squared return.
    """

    def __init__(
        self,
        config: GPT2Config | None = None,
        separate_critic: bool = False,
        lm: CausalLM | None = None,
        critic: nn.Module | None = None,
    ) -> None:
        """The tiny GPT-2 of ``config`` (with a GPT-2 critic trunk of its own with ``separate_critic``), or the
        given modules: ``lm`` a transformers causal LM, ``critic`` None (the value head on ``lm``) or a
        transformers base model (``pgrad.lm.folders``)."""
        super().__init__()
        if lm is None:
            if config is None:
                raise ValueError("PolicyWithValue needs a GPT2Config or a language model")
            lm = GPT2LMHeadModel(config)
            critic = GPT2Model(config) if separate_critic else None
        self.lm: CausalLM = lm
        self.critic = critic
        self.value_head = nn.Linear(hidden_size(critic or lm), 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [B, L, V], values [B, L])."""
        positions = position_ids(attention_mask)
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            output_hidden_states=self.critic is None,
            use_cache=False,
        )
        if self.critic is None:
            hidden = out.hidden_states[-1]
        else:
            hidden = self.critic(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
            ).last_hidden_state
        values = self.value_head(hidden).squeeze(-1)
        return out.logits, values

    def init_value_from(self, reward_model: RewardModel) -> None:
        """The critic's trunk and the value head from a reward model's (InstructGPT): the first values are the
        reward model's score of each partial response. Needs ``separate_critic`` and the same architecture;
        a ``ValueError`` names what does not fit."""
        if self.critic is None:
            raise ValueError("the value head shares the policy's trunk: a reward model's trunk cannot go there")
        try:
            self.critic.load_state_dict(reward_model.trunk.state_dict())
            # strict=False: a sequence-classification head has no bias (the value head's stays 0)
            self.value_head.load_state_dict(reward_model.head.state_dict(), strict=False)
        except RuntimeError as exc:
            raise ValueError(
                f"the reward model's weights do not fit the critic: {str(exc).splitlines()[-1].strip()}"
            ) from None


LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]  # GPT-2's attention and MLP projections (Conv1D: fan_in_fan_out)


def attach_lora(policy: PolicyWithValue, rank: int, alpha: int) -> None:
    """Replace ``policy.lm`` by a peft LoRA model of its weights: only the adapters (and the value head, and a
    separate critic) train. The adapters start at B = 0, so the model is unchanged until the first step."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("lora_rank needs peft: pip install 'pgrad[lm]'") from None
    gpt2 = getattr(policy.lm.config, "model_type", "gpt2") == "gpt2"
    # GPT-2's projections are Conv1D (weights stored transposed); other architectures' (a model folder's Llama,
    # Qwen2, Mistral) are nn.Linear: peft's "all-linear" takes every one but the output layer
    targets: list[str] | str = LORA_TARGETS if gpt2 else "all-linear"
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, fan_in_fan_out=gpt2, lora_dropout=0.0, bias="none"
    )
    # the peft model forwards calls and attributes to the GPT-2 it wraps: it stands in for one everywhere. peft
    # 0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` alias: its FutureWarning is theirs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        policy.lm = get_peft_model(policy.lm, config)  # type: ignore[assignment]


class AdapterDisabled:
    """The reference of a LoRA policy: the same model called with its adapter switched off. A plain object, not
    a module: registering the policy's model under it would let ``requires_grad_(False)`` on the reference
    freeze the policy's adapters."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model

    def __call__(self, **inputs: Tensor | bool) -> Any:
        with self.peft_model.disable_adapter():  # type: ignore[operator]
            return self.peft_model(**inputs)


class RewardModel(nn.Module):
    """A GPT-2 trunk and a scalar head read at the response's last real token: score(prompt, response)."""

    def __init__(
        self, config: GPT2Config | None = None, trunk: nn.Module | None = None, head: nn.Module | None = None
    ) -> None:
        """A GPT-2 trunk of ``config`` and a fresh head, or the given ``trunk`` (a transformers base model) with
        ``head`` (a one-output linear layer; None: a fresh one)."""
        super().__init__()
        if trunk is None:
            if config is None:
                raise ValueError("RewardModel needs a GPT2Config or a trunk")
            trunk = GPT2Model(config)
        self.trunk = trunk
        self.head = head if head is not None else nn.Linear(hidden_size(trunk), 1)

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, response: Tensor, response_mask: Tensor) -> Tensor:
        """The score [B] of each (prompt, response): the head on the trunk's last hidden state at the response's last
        real token."""
        ids, mask = join(prompt_ids, prompt_mask, response, response_mask)
        hidden = self.trunk(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False
        ).last_hidden_state
        last = prompt_ids.shape[1] + last_token_index(response_mask)
        rows = torch.arange(ids.shape[0], device=ids.device)
        score: Tensor = self.head(hidden[rows, last]).squeeze(-1)
        return score


def join(prompt_ids: Tensor, prompt_mask: Tensor, response: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[prompt | response]`` ids and attention mask."""
    return torch.cat([prompt_ids, response], 1), torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], 1)


@dataclass(frozen=True)
class ResponseOutputs:
    """Per response token [B, R]: log-probs (0 at padding) and, for a policy with a value head, values."""

    logprobs: Tensor
    values: Tensor | None
    entropy: Tensor


def response_outputs(
    model: PolicyWithValue | GPT2LMHeadModel | AdapterDisabled,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response: Tensor,
    response_mask: Tensor,
    temperature: float = 1.0,
) -> ResponseOutputs:
    """Log pi(y_t | x, y_<t) / values / entropies of each response token, in one forward pass.

    The output at column ``P - 1 + t`` (the prompt's last token, then each response token) predicts
    response token ``t``; logits are divided by the sampling temperature, so these are the log-probs of
    the distribution the tokens were sampled from.
    """
    ids, mask = join(prompt_ids, prompt_mask, response, response_mask)
    start, length = prompt_ids.shape[1] - 1, response.shape[1]
    values = None
    if isinstance(model, PolicyWithValue):
        logits, all_values = model(ids, mask)
        values = all_values[:, start : start + length].float()  # float32 under autocast too
    else:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
    logits = logits[:, start : start + length].float() / temperature
    response_mask = response_mask.to(logits.dtype)
    logp_all = torch.log_softmax(logits, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) * response_mask
    return ResponseOutputs(token_logprobs(logits, response, response_mask), values, entropy)


# ---- sampling ----------------------------------------------------------------------------------


def filter_top_k(logits: Tensor, top_k: int) -> Tensor:
    """Keep the ``top_k`` largest logits of each row (ties at the k-th value kept), the rest -inf; 0: all."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities sum to at least
    ``top_p`` (the most likely token always stays); 1.0: all."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, -1)
    before = probs.cumsum(-1) - probs  # mass of the more likely tokens: a token is kept while that is < top_p
    drop_sorted = before >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@dataclass(frozen=True)
class Samples:
    """Responses [B, R] right-padded with the pad id after the EOS, and their mask (the EOS is real)."""

    response: Tensor
    mask: Tensor


@torch.no_grad()
def sample(
    lm: GPT2LMHeadModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Samples:
    """Autoregressive sampling with a KV cache: the prompt in one pass, then one token per pass.

    A row is finished after its EOS; later columns hold ``pad_id`` and mask 0. Returns at least one
    column and at most ``max_new_tokens`` (fewer when every row finished early).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    batch = prompt_ids.shape[0]
    mask = prompt_mask.clone()
    out = lm(input_ids=prompt_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True)
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens, real = [], []
    for step in range(max_new_tokens):
        logits = filter_top_p(filter_top_k(out.logits[:, -1, :].float() / temperature, top_k), top_p)
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        real.append(~finished)
        tokens.append(token)
        finished = finished | (token == eos_id)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = lm(
            input_ids=token.unsqueeze(1),
            attention_mask=mask,
            position_ids=position_ids(mask)[:, -1:],
            cache=out.cache,
            use_cache=True,
        )
    return Samples(torch.stack(tokens, 1), torch.stack(real, 1).long())
