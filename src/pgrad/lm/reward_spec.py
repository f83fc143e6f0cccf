"""``lm_ppo.reward`` read into reward terms, and the trust rule for reward functions; no torch.

``lm_ppo.reward`` is one reward or a list of weighted ones (docs/lm-rewards.md):

- ``model``: the reward model (or ensemble) of ``lm_ppo.reward_model``;
- ``true_score``: the task's hidden true score (``digits``; ``true``, as YAML reads ``reward: true``, is the
  same);
- ``verifier:NAME``: a built-in verifier (``pgrad.lm.verifiers``: exact_answer, regex, format, length), its
  options from the ``lm_ppo.verifier`` section or from the term's own keys;
- ``module:function``: a Python function ``fn(prompts, completions, **columns) -> list[float]``, imported only
  with ``--trust-reward-code``.

A list combines them, each item a string (weight 1) or a mapping
``{reward: SOURCE, weight: W, name: N, answer_column/pattern/length_target/length_scale: ...}``; the
optimised reward is sum_i w_i r_i, and each term is logged as ``reward/<name>``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pgrad.config import Checked, param
from pgrad.errors import ConfigError
from pgrad.lm.verifiers import VERIFIER_OPTIONS

VERIFIER_PREFIX = "verifier:"
BUILT_IN = ("model", "true_score")
# 'package.module:function' (the function may be an attribute path: 'module:Class.method')
_FUNCTION = re.compile(r"(?P<module>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
TERM_KEYS = ("reward", "weight", "name", "answer_column", "pattern", "length_target", "length_scale")
Kind = Literal["model", "true_score", "verifier", "function"]


@dataclass(frozen=True)
class VerifierConfig(Checked):
    """The built-in verifiers' options (the ``lm_ppo.verifier`` section); a term of a reward list may give
    its own value of any of them as a key of its mapping."""

    SECTION: ClassVar[str] = "verifier"

    answer_column: str = param("answer", "exact_answer: the column of the prompt's row holding the reference answer")
    pattern: str | None = param(None, "regex (re.search) and format (re.fullmatch): the pattern the completion matches")
    length_target: int = param(0, "length: the completion length (characters) that costs nothing")
    length_scale: float = param(0.01, "length: the penalty per character away from length_target")

    def validate(self) -> None:
        """Checks the pattern compiles and the length penalty's target and scale are >= 0."""
        if self.pattern is not None:
            check_pattern(self.pattern, self._name("pattern"))
        self.check_range("length_target", 0)
        self.check_range("length_scale", 0)


def check_pattern(pattern: str, where: str) -> None:
    """A ``ConfigError`` naming ``where`` unless ``pattern`` is a regular expression Python compiles."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where} must be a regular expression; {pattern!r} does not compile: {exc}") from None


@dataclass(frozen=True)
class RewardTerm:
    """One reward of ``lm_ppo.reward``: its source, its weight in the sum, the name it is logged under
    (``reward/<name>``) and, for a verifier, its options."""

    source: str  # 'model', 'true_score', 'verifier:NAME' or 'module:function'
    weight: float = 1.0
    name: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # a verifier's options, sorted by name

    @property
    def kind(self) -> Kind:
        """What computes the term: the reward model, the true score, a verifier or a Python function."""
        if self.source in ("model", "true_score"):
            return "model" if self.source == "model" else "true_score"
        return "verifier" if self.source.startswith(VERIFIER_PREFIX) else "function"

    @property
    def verifier(self) -> str:
        """The verifier's name (``exact_answer`` of ``verifier:exact_answer``); '' for other kinds."""
        return self.source.removeprefix(VERIFIER_PREFIX) if self.kind == "verifier" else ""

    def option(self, key: str) -> Any:
        """A verifier option's value (KeyError when the term has none)."""
        return dict(self.options)[key]


def means_true_score(value: Any) -> bool:
    """The aliases of ``true_score``: YAML reads ``reward: true`` as the boolean, a quoted one is the string."""
    return value is True or (isinstance(value, str) and value == "true")


def canonical_reward(value: Any) -> Any:
    """``reward`` with the boolean ``true`` and the string ``'true'`` read as ``'true_score'`` (alone or as a
    list's item): what the config keeps and saves."""
    if isinstance(value, tuple | list):
        return tuple(canonical_reward(item) for item in value)
    if isinstance(value, dict) and means_true_score(value.get("reward")):
        return {**value, "reward": "true_score"}
    return "true_score" if means_true_score(value) else value


def default_name(source: str) -> str:
    """The name a term is logged under unless it gives one: the verifier's or the function's own name."""
    if source.startswith(VERIFIER_PREFIX):
        return source.removeprefix(VERIFIER_PREFIX)
    return source.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def check_source(source: Any, where: str) -> str:
    """A term's source checked: a built-in name, a known ``verifier:NAME`` or a ``module:function``."""
    allowed = "'model', 'true_score', 'verifier:NAME' (" + ", ".join(VERIFIER_OPTIONS) + ") or 'module:function'"
    if not isinstance(source, str):
        raise ConfigError(f"{where} must be {allowed}; got {source!r}")
    if source in BUILT_IN:
        return source
    if source.startswith(VERIFIER_PREFIX):
        if source.removeprefix(VERIFIER_PREFIX) not in VERIFIER_OPTIONS:
            raise ConfigError(f"{where}: unknown verifier {source!r} (allowed: {', '.join(VERIFIER_OPTIONS)})")
        return source
    if _FUNCTION.fullmatch(source) is None:
        raise ConfigError(f"{where} must be {allowed}; got {source!r}")
    return source


def build_term(item: Any, defaults: VerifierConfig, where: str) -> RewardTerm:
    """One item of ``reward`` (a source string, or a mapping with ``reward:`` and optional keys) as a term,
    its verifier options filled from ``defaults``."""
    data = {"reward": item} if not isinstance(item, dict) else dict(item)
    unknown = [key for key in data if key not in TERM_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(TERM_KEYS)})")
    if "reward" not in data:
        raise ConfigError(f"{where} needs 'reward:' naming its source (e.g. verifier:exact_answer)")
    source = check_source(data["reward"], f"{where}.reward" if isinstance(item, dict) else where)
    weight = data.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise ConfigError(f"{where}.weight must be a finite number; got {weight!r}")
    name = data.get("name", default_name(source))
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ConfigError(f"{where}.name must be letters, digits, '_', '.' or '-'; got {name!r}")
    verifier = source.removeprefix(VERIFIER_PREFIX) if source.startswith(VERIFIER_PREFIX) else None
    reads = VERIFIER_OPTIONS.get(verifier, ()) if verifier else ()
    given = [key for key in data if key in VerifierConfig.__dataclass_fields__]
    misplaced = [key for key in given if key not in reads]
    if misplaced:
        takes = f"it reads {', '.join(reads)}" if reads else "it takes no options"
        raise ConfigError(f"{where}.{misplaced[0]} is not an option of {source!r} ({takes})")
    try:  # the term's own values over the section's, checked by the same class
        options = VerifierConfig(**{**defaults.to_dict(), **{key: data[key] for key in given}})
    except ConfigError as exc:
        own = f"{VerifierConfig.SECTION}."
        message = str(exc)
        raise ConfigError(f"{where}.{message.removeprefix(own)}" if message.startswith(own) else message) from None
    if verifier in ("regex", "format") and options.pattern is None:
        raise ConfigError(f"{where}: {source} needs a pattern (lm_ppo.verifier.pattern, or 'pattern:' in the term)")
    return RewardTerm(source, float(weight), name, tuple(sorted((key, getattr(options, key)) for key in reads)))


def reward_terms(reward: Any, defaults: VerifierConfig, where: str = "lm_ppo.reward") -> tuple[RewardTerm, ...]:
    """The terms of ``lm_ppo.reward``: one (weight 1) for a string, one per item for a list; every source,
    weight, name and option checked, with one line naming the field on the first bad one."""
    reward = canonical_reward(reward)
    items = list(reward) if isinstance(reward, tuple) else [reward]
    if not items:
        raise ConfigError(f"{where} must name at least one reward; got an empty list")
    several = isinstance(reward, tuple)
    terms = tuple(build_term(item, defaults, f"{where}[{i}]" if several else where) for i, item in enumerate(items))
    names = [term.name for term in terms]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(f"{where}[{index}]: two terms are named {name!r}; give one a 'name:' of its own")
    return terms


def reward_functions(terms: tuple[RewardTerm, ...]) -> list[str]:
    """The ``module:function`` sources among ``terms`` (the code a run would import)."""
    return [term.source for term in terms if term.kind == "function"]


def refuse_untrusted_reward_code(terms: tuple[RewardTerm, ...], source: str, trust_reward_code: bool) -> None:
    """Refuse a reward that names a Python function unless ``trust_reward_code`` (``--trust-reward-code``):
    computing it imports that module and runs its code. ``source`` says where the config came from (the
    command line, or a run folder's config.yaml that someone else may have written)."""
    functions = reward_functions(terms)
    if functions and not trust_reward_code:
        module = functions[0].split(":")[0]
        raise ConfigError(
            f"{source}: lm_ppo.reward names the Python function '{functions[0]}': computing it imports module "
            f"'{module}' and runs its code; if you trust it, pass --trust-reward-code"
        )
