"""Built-in verifiers: rewards computed from a completion's text (and a column of its prompt's row), no model.

Each is a small pure function of Python strings, one reward per completion, named in ``lm_ppo.reward`` as
``verifier:NAME``:

- ``exact_answer``: 1.0 when the final answer extracted from the completion (``extract_answer``) equals the
  row's reference answer (column ``answer_column``, default ``answer``), else 0.0;
- ``regex``: 1.0 when ``pattern`` matches somewhere in the completion (``re.search``), else 0.0;
- ``format``: 1.0 when the whole completion, stripped of surrounding whitespace, matches ``pattern``
  (``re.fullmatch``), else 0.0;
- ``length``: -length_scale x |len(completion) - length_target|, the length in characters.

No torch, no transformers: the functions run on any text, and their tests are hand values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# \boxed{...} as LaTeX solutions write it; the content may itself hold braces (\boxed{\frac{1}{2}})
_BOXED = "\\boxed{"
# "answer: 42", "Answer is 42", "final answer = 42" (case-insensitive); the rest of that line is the answer
_ANSWER_LINE = re.compile(r"answer\s*(?:is\s*[:=]?|[:=])\s*(?P<rest>[^\n]*)", re.IGNORECASE)
# integers and decimals, optionally signed, with thousands separators: -3, 1,234, 0.5, .5
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (braces balanced), or None when there is none or
    it is not closed."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for index in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[begin:index]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a completion gives, by the first of these rules that finds one:

    1. the content of the last ``\\boxed{...}``;
    2. the rest of the line after the last ``answer:`` / ``answer is`` / ``answer =`` (any case);
    3. the last number in the text (``-3``, ``1,234``, ``0.5``).

    None when none applies. The result is not normalised (``normalize_answer`` does that).
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    lines = list(_ANSWER_LINE.finditer(text))
    if lines and lines[-1]["rest"].strip():
        return lines[-1]["rest"]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: object) -> str:
    """An answer in the form two answers are compared in: surrounding whitespace, ``$`` signs and a final
    period dropped, lower case, and a number written canonically (``1,234`` and ``1234.0`` are ``1234``;
    ``0.50`` is ``0.5``), so "$1,234." and "1234" agree."""
    text = str(answer).strip().replace("$", "").rstrip(".").strip().lower()
    if _NUMBER.fullmatch(text):
        digits = text.replace(",", "").lstrip("+")
        if "." not in digits:  # an integer: exact at any size (a float would round past 2^53)
            return str(int(digits))
        value = float(digits)
        return str(int(value)) if value.is_integer() else repr(value)
    return text


def exact_answer(completions: Sequence[str], answers: Sequence[object]) -> list[float]:
    """1.0 where the completion's extracted final answer equals its reference answer after normalisation
    (``extract_answer``, ``normalize_answer``), else 0.0 (also when no answer can be extracted)."""
    rewards = []
    for completion, answer in zip(completions, answers, strict=True):
        found = extract_answer(completion)
        rewards.append(float(found is not None and normalize_answer(found) == normalize_answer(answer)))
    return rewards


def regex_match(completions: Sequence[str], pattern: str) -> list[float]:
    """1.0 where ``pattern`` matches somewhere in the completion (``re.search``), else 0.0."""
    compiled = re.compile(pattern)
    return [float(compiled.search(completion) is not None) for completion in completions]


def format_match(completions: Sequence[str], pattern: str) -> list[float]:
    """1.0 where the whole completion, stripped of surrounding whitespace, matches ``pattern``
    (``re.fullmatch``: the format of the entire answer, not a fragment of it), else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)
    return [float(compiled.fullmatch(completion.strip()) is not None) for completion in completions]


def length_penalty(completions: Sequence[str], target: int, scale: float) -> list[float]:
    """The length penalty r = -scale x |len(completion) - target|, the length in characters: 0 at the
    target length, falling linearly on either side (target 0: a plain cost per character)."""
    return [-scale * abs(len(completion) - target) for completion in completions]


# verifier name -> the options (fields of ``lm_ppo.verifier`` or keys of a reward term) it reads
VERIFIER_OPTIONS: dict[str, tuple[str, ...]] = {
    "exact_answer": ("answer_column",),
    "regex": ("pattern",),
    "format": ("pattern",),
    "length": ("length_target", "length_scale"),
}
