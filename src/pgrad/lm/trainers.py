"""Language-model trainers in the habits of TRL: ``GRPOTrainer(model=DIR, reward_funcs=[...], args=GRPOConfig(...),
train_dataset=...).train()``, ``save_model(DIR)``, ``evaluate()``, callbacks.

``from pgrad.lm import GRPOTrainer, GRPOConfig`` (loaded on first use: ``import pgrad`` and ``import pgrad.lm``
load no torch). A thin layer over what ``pgrad lm grpo|ppo|dpo|sft|rm`` runs: the config is resolved by
``pgrad.runs.resolve_config`` (defaults < ``args`` < ``sets``, every field validated with the CLI's one-line
errors), training is the CLI's runner with its run folder, guard and checkpoints, and ``save_model`` is
``pgrad lm export``. The same settings through the CLI and through a trainer give the same weights, bit for bit.

- ``model``: a Hugging Face model folder (``lm_*.model``), or None for the built-in tiny GPT-2 on ``digits``.
- ``args``: the TRL-named config of ``pgrad.lm.trl_compat`` (``GRPOConfig``...; each argument mapped or refused
  by its table) or pgrad's section (``LMPPOConfig(advantage="grpo", ...)``).
- ``train_dataset`` / ``eval_dataset``: a file or ``save_to_disk`` folder (``lm_*.dataset``), or rows in memory
  (a list of dicts, a ``datasets.Dataset``), which are written as JSONL to ``<run_dir>.data/`` so that the run
  folder's config names a file that ``pgrad resume`` and ``pgrad eval`` can read again.
- ``reward_funcs`` (PPO, RLOO, GRPO): one or a list of: a Python callable ``f(prompts, completions, **columns) ->
  list[float]`` (TRL's signature; the extra columns of the prompt rows arrive as keywords), used in-process as
  passed, no trust flag (the caller handed over the object); ``"verifier:NAME"``; ``"module:function"``
  (imported: needs ``trust_reward_code=True``, as ``--trust-reward-code``); a reward-model folder or
  ``pgrad lm rm`` run (one). ``args.reward_weights`` weighs them; each is logged as ``reward/<name>``.

Callbacks are ``pgrad.callbacks.BaseCallback``s (docs/callbacks.md), bound to the trainer (``self.model``).
When each hook fires in a language-model run: ``_on_training_start`` once per ``train()``; ``_on_step`` and
``on_update(row)`` once per logged row (row 0 is the starting model's evaluation; then one per update: a rollout of
``batch_size`` responses, or ``eval_every`` rows of pairs or demonstrations), before the row is written, so a scalar
``self.logger.record("custom/x", v)`` lands in that row of ``metrics.jsonl``; ``on_evaluation(row)`` after it when
the row holds an evaluation (``eval/*``); ``on_checkpoint(path, step)`` after each checkpoint;
``_on_training_end`` after the final checkpoint. Any hook returning False stops the run after the update in
progress (its final checkpoint written; ``events.jsonl`` records ``run.stopped_by_callback``).

Global state: a run seeds the global RNGs and thread counts as the CLI does; ``train`` puts them back after.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pgrad import safe_io
from pgrad.api import check_arguments, kept_global_state
from pgrad.callbacks import Logger, as_callbacks
from pgrad.config import Checked, TrainConfig, merge
from pgrad.errors import ConfigError
from pgrad.lm.config import ALGO, DPO_ALGO, RM_ALGO, LMPPOConfig
from pgrad.lm.reward_spec import refuse_untrusted_reward_code
from pgrad.lm.trl_compat import (
    CONFIG_NAMES,
    TRAINERS,
    TrlConfig,
    batch_fields,
    step_fields,
    trl_names,
)
from pgrad.monitor.sinks import read_jsonl

_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class TrainOutput:
    """What ``train()`` returns (TRL's ``TrainOutput`` names first): ``global_step`` the updates done, ``metrics``
    the last logged row (``eval/*`` from the final evaluation), then pgrad's: ``steps`` (rows: responses, pairs
    or demonstrations), the run folder, the final checkpoint, and whether a callback or a signal stopped it."""

    global_step: int
    metrics: dict[str, Any]
    steps: int
    run_dir: Path
    checkpoint: Path | None
    stopped: bool


def function_source(function: Callable[..., Any], index: int) -> tuple[str, str]:
    """(source, name) of a reward function passed as an object: ``module:qualname`` (the name ``pgrad resume
    --trust-reward-code`` imports again when it is a module's top-level function), and the name it is logged under
    (``reward/<name>``, TRL's ``__name__``). Closures and lambdas get a source that only labels them."""
    module = getattr(function, "__module__", None) or "python_object"
    qualname = getattr(function, "__qualname__", None) or f"reward_{index}"
    parts = [_NAME.sub("_", part) or "_" for part in qualname.split(".")]
    parts = [part if not part[0].isdigit() else f"_{part}" for part in parts]
    module = ".".join(_NAME.sub("_", part) or "_" for part in module.split("."))
    name = _NAME.sub("_", getattr(function, "__name__", "") or f"reward_{index}")
    return f"{module}:{'.'.join(parts)}", name


def reward_layer(
    funcs: Any, weights: Any, cls: str
) -> tuple[list[dict[str, Any]], dict[str, Callable[..., Any]], str | None]:
    """``reward_funcs`` as (the terms of ``lm_ppo.reward``, the functions passed as objects by source, the reward
    model folder of a folder term or None). One ConfigError line for a bad item or weights that do not fit."""
    items = list(funcs) if isinstance(funcs, Sequence) and not isinstance(funcs, (str, bytes)) else [funcs]
    if weights is not None and (not isinstance(weights, Sequence) or len(weights) != len(items)):
        raise ConfigError(f"{cls}: reward_weights must be a list of {len(items)} numbers, one per reward function")
    terms: list[dict[str, Any]] = []
    functions: dict[str, Callable[..., Any]] = {}
    folder: str | None = None
    for index, item in enumerate(items):
        term: dict[str, Any]
        if callable(item):
            source, name = function_source(item, index)
            names = [t.get("name") for t in terms]
            term = {"reward": source, "name": name if name not in names else f"{name}_{index}"}
            functions[source] = item
        elif isinstance(item, (str, Path)) and Path(item).is_dir():
            if folder is not None:
                raise ConfigError(f"{cls}: reward_funcs[{index}]: one reward-model folder (or ensemble run) at most")
            folder, term = str(item), {"reward": "model"}
        elif isinstance(item, str):
            term = {"reward": item}
        elif isinstance(item, Mapping):
            term = dict(item)
        else:
            raise ConfigError(
                f"{cls}: reward_funcs[{index}] must be a callable, 'verifier:NAME', 'module:function' or a "
                f"reward-model folder; got {type(item).__name__}"
            )
        if weights is not None:
            term["weight"] = weights[index]
        terms.append(term)
    return terms, functions, folder


def rows_of(data: Any, what: str) -> list[Any] | None:
    """Rows in memory (a list or tuple of dicts, or anything with ``to_list()``: a ``datasets.Dataset``), or None
    for a path."""
    if isinstance(data, (str, Path)):
        return None
    if hasattr(data, "to_list") and callable(data.to_list):
        data = data.to_list()
    if not isinstance(data, (list, tuple)):
        raise ConfigError(f"{what} must be a path, a list of dicts or a datasets.Dataset; got {type(data).__name__}")
    return list(data)


def write_rows(rows: list[Any], path: Path, what: str, overwrite: bool) -> str:
    """``rows`` as JSON lines at ``path`` (the run's data folder): a file there with other rows is refused unless
    ``overwrite`` (it may be the data of an earlier run in the same folder)."""
    lines = []
    for index, row in enumerate(rows):
        try:
            lines.append(json.dumps(row, ensure_ascii=False))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what}[{index}] is not plain JSON data (str, number, list, dict): {exc}") from None
    text = "".join(line + "\n" for line in lines)
    # The data folder sits beside the run folder and may come from elsewhere: neither it nor the file may be a
    # link (a planted one would redirect the write), and the file is replaced atomically (pgrad.safe_io).
    for place in (path.parent, path):
        reason = safe_io.link_refusal(place)
        if reason is not None:
            raise ConfigError(reason)
    if path.is_file() and safe_io.read_bytes(path).decode("utf-8") != text and not overwrite:
        raise ConfigError(f"{path} holds other rows (an earlier run's data?); choose another run_dir or overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    safe_io.write_atomic(path, text)
    return str(path)


def training_rows(section: Any, seed: int) -> int:
    """How many rows of the section's data set train: all of them with an ``eval_dataset``, else those the
    ``eval_fraction`` split (``pgrad.lm.data.split_rows``, as the runners split) leaves."""
    from pgrad.lm.build import DATA_KINDS
    from pgrad.lm.data import read_rows, split_rows

    rows = read_rows(section.dataset, DATA_KINDS[type(section)])
    if section.eval_dataset is not None:
        return len(rows)
    return len(split_rows(rows, section.eval_fraction, seed, section.dataset)[0])


class LMTrainer:
    """One trainer of ``pgrad.lm`` (see the module docstring); ``GRPOTrainer``, ``PPOTrainer``... fix ``TRAINER``.
    Every argument after ``model`` is a keyword (TRL's trainers order their positional arguments differently)."""

    TRAINER: ClassVar[str] = ""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        reward_funcs: Any = None,
        args: TrlConfig | Checked | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        callbacks: Any = None,
        reward_model: str | Path | None = None,
        ref_model: str | Path | None = None,
        value_model: str | Path | None = None,
        peft_config: Any = None,
        processing_class: Any = None,
        run_dir: str | Path | None = None,
        sets: Sequence[str] = (),
        trust_reward_code: bool = False,
        overwrite: bool = False,
        verbose: bool = False,
    ) -> None:
        self.name = type(self).__name__
        self.section_name, advantage = TRAINERS[self.TRAINER]
        flags = {"trust_reward_code": trust_reward_code, "overwrite": overwrite, "verbose": verbose}
        check_arguments(None, sets, None, run_dir, flags)
        if processing_class is not None:
            raise ConfigError(f"{self.name}: processing_class: the tokenizer is the model folder's; leave it out")
        self.overwrite, self.verbose, self.trust_reward_code = overwrite, verbose, trust_reward_code
        self.callbacks = as_callbacks(callbacks, f"{self.name}: callbacks")
        layer, held = self._args_layer(args, advantage)
        own = self._constructor_layer(model, reward_model, ref_model, value_model, peft_config)
        self.functions: dict[str, Callable[..., Any]] = {}
        if reward_funcs is not None:
            own.update(self._rewards(reward_funcs, held.get("reward_weights"), own))
        elif "reward_weights" in held:
            raise ConfigError(f"{self.name}: reward_weights needs reward_funcs")
        self.run_dir = Path(run_dir or held.get("output_dir") or self._default_run_dir())
        self._written: list[Path] = []  # data files this constructor created: removed again if it refuses
        try:
            own.update(self._datasets(train_dataset, eval_dataset))
            layer = merge(layer, {self.section_name: own})
            with trl_names(self.TRAINER, args.values if isinstance(args, TrlConfig) else {}):
                self.config = self._resolve(layer, held, list(sets))
            self._refuse_untrusted()
        except BaseException:
            self._remove_written()
            raise
        self._logger = Logger()
        self.last_output: TrainOutput | None = None

    # ---- building the config ----------------------------------------------------------------------
    def _args_layer(self, args: Any, advantage: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """``args`` as (config layer, held TRL values): a TRL-named config of this trainer or pgrad's section."""
        from pgrad.lm.config import CONFIG_CLASSES

        section_cls = CONFIG_CLASSES[self.section_name]
        if args is None:
            return ({self.section_name: {"advantage": advantage}} if advantage else {}), {}
        if isinstance(args, TrlConfig):
            if args.TRAINER != self.TRAINER:
                raise ConfigError(f"{self.name}: args is a {type(args).__name__}; pass a {CONFIG_NAMES[self.TRAINER]}")
            layer = merge({}, args.layer)
            fields = batch_fields(self.TRAINER, args.held)
            for path, value in fields.items():
                layer.setdefault(self.section_name, {})[path.split(".", 1)[1]] = value
            return layer, dict(args.held)
        if isinstance(args, section_cls):
            if advantage is not None and getattr(args, "advantage", None) != advantage:
                raise ConfigError(
                    f"{self.name}: args is an LMPPOConfig with advantage {getattr(args, 'advantage', None)!r}; "
                    f"{self.name} trains advantage {advantage!r} (build it with advantage={advantage!r})"
                )
            return {self.section_name: args.to_dict()}, {}
        raise ConfigError(
            f"{self.name}: args must be a {CONFIG_NAMES[self.TRAINER]} (TRL's names) or pgrad's "
            f"{section_cls.__name__}; got {type(args).__name__}"
        )

    def _constructor_layer(
        self, model: Any, reward_model: Any, ref_model: Any, value_model: Any, peft_config: Any
    ) -> dict[str, Any]:
        """The section fields the constructor's model arguments set (each refused where this trainer has none)."""
        own: dict[str, Any] = {}
        if model is not None:
            if not isinstance(model, (str, Path)):
                raise ConfigError(
                    f"{self.name}: model must be a model folder's path (save_pretrained it first); got "
                    f"{type(model).__name__}"
                )
            own["model"] = {"path": str(model)}
        sampling = self.section_name == ALGO
        given = {"reward_model": reward_model, "ref_model": ref_model, "value_model": value_model}
        takes = {"reward_model": sampling, "ref_model": sampling or self.section_name == DPO_ALGO}
        takes["value_model"] = self.TRAINER == "ppo"
        for name, value in given.items():
            if value is None:
                continue
            if not takes[name]:
                raise ConfigError(f"{self.name} takes no {name}")
            if not isinstance(value, (str, Path)):
                raise ConfigError(f"{self.name}: {name} must be a folder's path; got {type(value).__name__}")
            own["reference_model" if name == "ref_model" else name] = str(value)
        if reward_model is not None:
            own["reward"] = "model"
        if peft_config is not None:
            own.update(self._lora(peft_config, sampling))
        return own

    def _lora(self, peft_config: Any, sampling: bool) -> dict[str, Any]:
        """A peft ``LoraConfig`` as ``lora_rank`` and ``lora_alpha`` (PPO, RLOO, GRPO)."""
        if not sampling:
            raise ConfigError(f"{self.name}: peft_config (LoRA) is offered for PPO, RLOO and GRPO")
        rank, alpha = getattr(peft_config, "r", None), getattr(peft_config, "lora_alpha", None)
        if not isinstance(rank, int) or not isinstance(alpha, (int, float)):
            raise ConfigError(f"{self.name}: peft_config must be a peft LoraConfig (with r and lora_alpha)")
        return {"lora_rank": rank, "lora_alpha": alpha}

    def _rewards(self, funcs: Any, weights: Any, own: dict[str, Any]) -> dict[str, Any]:
        """``reward_funcs`` as the section's ``reward`` (and ``reward_model`` of a folder in it)."""
        if self.section_name != ALGO:
            raise ConfigError(f"{self.name} takes no reward_funcs (it learns from its data set)")
        terms, self.functions, folder = reward_layer(funcs, weights, self.name)
        # one plain term is written as the CLI's --set reward=X would write it (config.yaml reads the same)
        single = len(terms) == 1 and terms[0].keys() == {"reward"}
        out: dict[str, Any] = {"reward": terms[0]["reward"] if single else terms}
        if folder is not None:
            if own.get("reward_model") not in (None, folder):
                raise ConfigError(f"{self.name}: a reward-model folder in reward_funcs and another reward_model")
            out["reward_model"] = folder
        elif "reward_model" in own:
            out["reward"] = [{"reward": "model"}, *terms]
        return out

    def _default_run_dir(self) -> Path:
        """``runs/<section>-<trainer>-<time>-<id>`` (``pgrad.runs.default_run_dir``'s shape), never an existing one."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            path = Path("runs") / f"{self.section_name}-{self.TRAINER}-{stamp}-{secrets.token_hex(3)}"
            if not path.exists():
                return path

    def _datasets(self, train: Any, held_out: Any) -> dict[str, Any]:
        """``dataset`` and ``eval_dataset``: a path as it is, rows in memory written to ``<run_dir>.data/``."""
        out: dict[str, Any] = {}
        for field_name, data, file in (("dataset", train, "train"), ("eval_dataset", held_out, "eval")):
            if data is None:
                continue
            what = "train_dataset" if field_name == "dataset" else "eval_dataset"
            rows = rows_of(data, f"{self.name}: {what}")
            if rows is None:
                out[field_name] = str(data)
                continue
            path = self.run_dir.with_name(self.run_dir.name + ".data") / f"{file}.jsonl"
            created = not path.exists()
            out[field_name] = write_rows(rows, path, what, self.overwrite)
            self._written += [path] if created else []
        return out

    def _remove_written(self) -> None:
        """Remove the data files this constructor created (and their folder when it is left empty)."""
        for path in self._written:
            path.unlink(missing_ok=True)
            if path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()

    def _resolve(self, layer: dict[str, Any], held: Mapping[str, Any], sets: list[str]) -> TrainConfig:
        """The config: pgrad's defaults < ``layer`` < ``sets``; TRL's step counts converted with the resolved
        section (``trl_compat.step_fields``), then resolved again."""
        from pgrad.runs import resolve_config

        config, _ = resolve_config(self.section_name, None, None, sets, use_preset=False, config_layer=layer)
        section = config.algo_config
        counted = (lambda: training_rows(section, config.run.seed)) if getattr(section, "dataset", None) else None
        steps = step_fields(self.TRAINER, held, section, counted)
        if not steps:
            return config
        extra: dict[str, Any] = {}
        for path, value in steps.items():
            section, key = path.split(".", 1)
            extra.setdefault(section, {})[key] = value
        config, _ = resolve_config(
            self.section_name, None, None, sets, use_preset=False, config_layer=merge(layer, extra)
        )
        return config

    def _refuse_untrusted(self) -> None:
        """A ``module:function`` reward given as text is imported: refused without ``trust_reward_code``. A function
        passed as an object needs no trust (the caller handed it over)."""
        section = self.config.algo_config
        if not isinstance(section, LMPPOConfig):
            return
        imported = tuple(term for term in section.code_terms if term.source not in self.functions)
        try:
            refuse_untrusted_reward_code(imported, self.name, self.trust_reward_code)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("pass --trust-reward-code", "pass trust_reward_code=True")) from None

    # ---- what TRL's trainers offer -----------------------------------------------------------------
    @property
    def logger(self) -> Logger:
        """The run's logger: ``record(key, value)`` adds a scalar to the row of the update in progress."""
        return self._logger

    @property
    def args(self) -> Any:
        """pgrad's resolved section (``LMPPOConfig``...): what the run trains with, every field filled."""
        return self.config.algo_config

    def train(self, resume_from_checkpoint: bool = False) -> TrainOutput:
        """Train to ``run.total_steps`` rows in the run folder (the CLI's runner, guard and checkpoints) and return
        the last row's metrics. ``resume_from_checkpoint=True`` continues the run folder's latest checkpoint (after
        a callback stopped it, or with a larger ``run.total_steps`` given by ``sets``), as ``pgrad resume``."""
        from pgrad.runners import runner_for

        if not isinstance(resume_from_checkpoint, bool):
            raise ConfigError(f"{self.name}.train: resume_from_checkpoint must be True or False (the run folder's own)")
        if self.last_output is not None and not resume_from_checkpoint:
            raise ConfigError(f"{self.name}.train ran already in {self.run_dir}; pass resume_from_checkpoint=True")
        for callback in self.callbacks:
            callback.init_callback(self)
        extra = {"reward_functions": self.functions} if self.section_name == ALGO else {}
        with kept_global_state():
            runner = runner_for(self.config)(
                self.config,
                self.run_dir,
                resume=resume_from_checkpoint,
                console=self.verbose,
                overwrite=self.overwrite and not resume_from_checkpoint,
                **extra,
            )
            runner.run.callbacks, runner.run.logger = list(self.callbacks), self._logger
            result = runner.train()
        self.last_output = TrainOutput(
            result.updates, dict(result.last_metrics), result.steps, result.run_dir, result.checkpoint,
            bool(runner.stop_requested),
        )  # fmt: skip
        return self.last_output

    def _trained(self, what: str) -> None:
        if self.last_output is None:
            raise ConfigError(f"{self.name}.{what}: nothing trained yet; call train() first")

    def evaluate(self) -> dict[str, float]:
        """The latest checkpoint's policy on the held-out prompts, as ``pgrad eval RUN`` (``eval/*``: the reward,
        KL to the reference, response length, degeneration); its prompts and noise are the run's own evaluations'.
        A reward model trainer returns its last held-out row (``eval/rm_accuracy``...)."""
        self._trained("evaluate")
        if self.section_name == RM_ALGO:
            rows = [row for row in read_jsonl(self.run_dir / "metrics.jsonl") if "eval/rm_accuracy" in row]
            return {key: float(value) for key, value in rows[-1].items() if key.startswith("eval/")} if rows else {}
        from pgrad.lm.eval_run import evaluate_run

        with kept_global_state():
            result = evaluate_run(
                self.run_dir, "latest", trust_reward_code=self.trust_reward_code, reward_functions=self.functions
            )
        return dict(result.metrics)

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """Write the trained policy (latest checkpoint, LoRA merged) as a model folder that ``transformers`` loads
        (``pgrad lm export RUN --out DIR --checkpoint latest``); default ``<run_dir>/model``. Returns the folder."""
        self._trained("save_model")
        if self.section_name == RM_ALGO:
            raise ConfigError(
                f"{self.name}.save_model: a reward model is used from its run folder: reward_model='{self.run_dir}' "
                "(PPOTrainer, or reward_funcs of GRPOTrainer)"
            )
        from pgrad.lm.export import export_policy

        out = Path(output_dir) if output_dir is not None else self.run_dir / "model"
        with kept_global_state():
            return export_policy(self.run_dir, out, "latest").folder

    def save(self, output_dir: str | Path | None = None) -> Path:
        """``save_model``'s other name."""
        return self.save_model(output_dir)


class GRPOTrainer(LMTrainer):
    """GRPO (``pgrad lm grpo``): groups of ``num_generations`` responses per prompt, group-normalised advantages,
    the KL to the reference in the loss (``lm_ppo`` with ``advantage: grpo``)."""

    TRAINER = "grpo"


class RLOOTrainer(LMTrainer):
    """RLOO: the leave-one-out baseline of each response's group (``lm_ppo`` with ``advantage: rloo``)."""

    TRAINER = "rloo"


class PPOTrainer(LMTrainer):
    """PPO with a value head and a per-token KL penalty in the reward (``pgrad lm ppo``)."""

    TRAINER = "ppo"


class DPOTrainer(LMTrainer):
    """Direct Preference Optimization on (prompt, chosen, rejected) rows (``pgrad lm dpo``)."""

    TRAINER = "dpo"


class SFTTrainer(LMTrainer):
    """Supervised fine-tuning on (prompt, completion) rows (``pgrad lm sft``)."""

    TRAINER = "sft"


class RewardTrainer(LMTrainer):
    """A Bradley-Terry reward model on (prompt, chosen, rejected) rows (``pgrad lm rm``); its run folder is a
    ``reward_model`` for ``PPOTrainer`` or a ``reward_funcs`` item of ``GRPOTrainer``."""

    TRAINER = "reward"


__all__ = [
    "DPOTrainer",
    "GRPOTrainer",
    "LMTrainer",
    "PPOTrainer",
    "RLOOTrainer",
    "RewardTrainer",
    "SFTTrainer",
    "TrainOutput",
]
