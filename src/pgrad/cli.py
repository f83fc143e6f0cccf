"""The ``pgrad`` command line: train, resume, eval, export, list, doctor, report, compare, tune, lm.

Every user error (bad config value, unknown key/algorithm/environment, malformed YAML, broken
checkpoint) is printed as one line ``pgrad: error: ...`` with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from pgrad import __version__
from pgrad.errors import ConfigError, PgradError, TrainingHalted


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        print(f"pgrad: error: {message} (see '{self.prog} --help')", file=sys.stderr)  # prog: 'pgrad lm sft'...
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pgrad", description="Policy-gradient reinforcement learning.")
    parser.add_argument("--version", action="version", version=f"pgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train an agent")
    train.add_argument("algo", help="algorithm name (see 'pgrad list')")
    train.add_argument("--env", help="Gymnasium id or entry point 'module:Class'")
    _run_flags(train, "YAML file with env:, run: and <algo>: sections", "total env steps (all envs together)")
    train.add_argument("--no-preset", action="store_true", help="ignore the tuned preset for this env")
    train.add_argument(
        "--backend", choices=["local", "ray"], help="where rollouts are collected (run.backend; ray needs pgrad[ray])"
    )
    train.add_argument("--workers", type=int, help="Ray rollout workers (ray.workers)")
    train.add_argument("--address", help="HOST:PORT of a Ray cluster to join (ray.address; default: a local Ray)")
    _inject_flag(train, "lr_spike@20000, nan_grad@15000, reward_flip@10000:5000")

    resume = sub.add_parser(
        "resume", help="continue a run (any algorithm, language models too) from its latest checkpoint"
    )
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--total-steps", type=int, help="new total (extends a finished run)")
    resume.add_argument("--quiet", action="store_true")
    resume.add_argument(
        "--trust-env-code",
        action="store_true",
        help="allow an entry-point env ('module:attr') from the run folder's config.yaml (it runs that module's code)",
    )
    _trust_ray_flag(resume)
    _trust_reward_flag(resume)

    evaluate = sub.add_parser("eval", help="evaluate a run's policy")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--episodes", type=int, default=10)
    # One default everywhere: training's evaluations, predict() and pgrad.evaluate act with the mode; so does this
    acting = evaluate.add_mutually_exclusive_group()
    acting.add_argument(
        "--deterministic", dest="deterministic", action="store_true", default=True, help="act with the mode (default)"
    )
    acting.add_argument(
        "--stochastic", dest="deterministic", action="store_false", help="act with a sample of the policy"
    )
    evaluate.add_argument("--checkpoint", default="latest", help="latest, best or a checkpoint name")
    evaluate.add_argument("--video", type=Path, metavar="DIR", help="record episodes as MP4 (needs pgrad[video])")
    evaluate.add_argument("--seed", type=int)
    evaluate.add_argument(
        "--randomize",
        action="append",
        default=[],
        metavar="NAME=SCALE|NAME=LOW:HIGH|train",
        help="evaluate on perturbed physics (MuJoCo envs; repeatable): mass=1.3 (every mass x1.3), "
        "friction=0.5:1.5 (drawn per geom and episode), damping, actuator_gain, obs_noise=STD, "
        "action_delay=STEPS; 'train': the run's own env.randomize ranges. Default: nominal physics",
    )
    evaluate.add_argument(
        "--trust-env-code",
        action="store_true",
        help="allow an entry-point env ('module:attr') from the run folder's config.yaml (it runs that module's code)",
    )
    evaluate.add_argument(
        "--prompts", type=int, help="language-model runs: held-out prompts (default: the run's eval_prompts)"
    )
    evaluate.add_argument(
        "--reward-model",
        type=Path,
        metavar="RM_RUN_DIR",
        help="language-model runs: score with this 'pgrad lm rm' run (default: the run's own reward, else the true "
        "score)",
    )
    _trust_reward_flag(evaluate)

    export = sub.add_parser(
        "export", help="write a run's policy as one ONNX or TorchScript file (raw observation in, env action out)"
    )
    export.add_argument("run_dir", type=Path, help="a run folder or an agent saved with pgrad.api's save()")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="onnx needs pgrad[export]")
    export.add_argument("--out", type=Path, help="file to write (default: RUN_DIR/export/policy.onnx or .pt)")
    export.add_argument("--checkpoint", default="latest", help="latest, best or a checkpoint name")
    export.add_argument(
        "--trust-env-code",
        action="store_true",
        help="allow an entry-point env ('module:attr') from the run folder's config.yaml (built to read its spaces)",
    )

    listing = sub.add_parser("list", help="algorithms, their config fields, defaults and docs, and presets")
    listing.add_argument(
        "what",
        nargs="?",
        help="only this: an algorithm (ppo, sac, lm_ppo, ...), a section (env, run, guard, ray) or presets",
    )

    doctor = sub.add_parser("doctor", help="diagnose a run: symptoms, where they started, likely causes, fixes")
    doctor.add_argument("run_dir", type=Path)

    report = sub.add_parser("report", help="HTML report and PNG plots of a run, guard events marked")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/report)")

    _compare_and_tune_parsers(sub)
    _lm_parser(sub)
    return parser


def _compare_and_tune_parsers(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        "compare", help="aggregate runs over seeds (mean, IQM, bootstrap intervals): a table and a PNG of the curves"
    )
    compare.add_argument("run_dirs", type=Path, nargs="+", help="run folders; same config but the seed: one group")
    compare.add_argument("--out", type=Path, default=Path("compare.png"), help="PNG to write (default: compare.png)")
    compare.add_argument("--metric", default="rollout/return_mean", help="metric to aggregate (default: %(default)s)")
    compare.add_argument("--statistic", choices=["iqm", "mean"], default="iqm", help="curve statistic in the plot")
    compare.add_argument("--confidence", type=float, default=0.95, help="bootstrap interval level (default: 0.95)")
    tune = sub.add_parser("tune", help="search hyper-parameters with Optuna; every trial is a run folder")
    tune.add_argument("algo", help="algorithm name (see 'pgrad list')")
    tune.add_argument("--env", help="Gymnasium id or entry point 'module:Class'")
    tune.add_argument("--trials", type=int, default=20, help="number of trials (default: 20)")
    tune.add_argument("--total-steps", type=int, help="env steps per trial (default: 20,000)")
    tune.add_argument("--config", type=Path, help="YAML file with env:, run: and <algo>: sections")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix one field (not searched)")
    tune.add_argument("--seed", type=int, help="seed of every trial's run and of the sampler")
    tune.add_argument("--tune-dir", type=Path, help="folder of the trials (default: runs/tune-ALGO-ENV-TIME)")
    tune.add_argument("--pruner", choices=["median", "none"], default="median", help="stop trailing trials early")
    tune.add_argument("--no-preset", action="store_true", help="ignore the tuned preset for this env")
    tune.add_argument(
        "--storage", help="keep the study in a database: sqlite:///tune.db or a URL (resume it, share it between jobs)"
    )
    tune.add_argument("--study-name", help="the study's name in --storage (default: the tune folder's name)")
    tune.add_argument(
        "--n-jobs", type=int, default=1, help="trials at once, each in its own process (needs --storage; default: 1)"
    )
    tune.add_argument("--job", type=int, default=0, help=argparse.SUPPRESS)  # a worker's index (--n-jobs)


def _run_flags(parser: argparse.ArgumentParser, config_help: str, steps_help: str) -> None:
    """The flags every command that starts a run takes (train and the language-model commands)."""
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--total-steps", type=int, help=steps_help)
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start in a --run-dir that is not empty: first delete an earlier run's files there (config.yaml, "
        "metrics.jsonl, events.jsonl, checkpoints/, tb/, report/, export/, halt_*.npz); other files are kept",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _trust_ray_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-ray",
        action="store_true",
        help="allow run.backend 'ray' from the run folder's config.yaml (it starts Ray here, or joins the cluster at "
        "its ray.address)",
    )


def _trust_reward_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-reward-code",
        action="store_true",
        help="allow lm_ppo.reward to name a Python function ('module:function'): computing it imports that module "
        "and runs its code",
    )


def _inject_flag(parser: argparse.ArgumentParser, examples: str) -> None:
    parser.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND@STEP[:DURATION]",
        help=f"fault drill (repeatable): {examples}",
    )


# pgrad lm COMMAND -> (algorithm, help, what run.total_steps counts with its default)
LM_COMMANDS = {
    "sft": ("lm_sft", "supervised fine-tuning on the task's demonstrations", "demonstrations (default: 8192)"),
    "rm": ("lm_rm", "train a reward model on the task's preference pairs (Bradley-Terry)", "pairs (default: 16384)"),
    "ppo": (
        "lm_ppo",
        "PPO with a value head and a per-token KL penalty to the initial weights (or RLOO / GRPO)",
        "responses (default: 4096)",
    ),
    "grpo": (
        "lm_ppo",
        "GRPO: 'pgrad lm ppo --set advantage=grpo' (groups of 8 responses per prompt, KL in the loss)",
        "responses (default: 4096)",
    ),
    "dpo": ("lm_dpo", "Direct Preference Optimization on the task's preference pairs", "pairs (default: 8192)"),
}
# what a command sets before the user's own --set (pgrad lm grpo is lm ppo with advantage grpo)
LM_COMMAND_SETS = {"grpo": ["advantage=grpo"]}


def _lm_parser(sub: argparse._SubParsersAction) -> None:
    lm = sub.add_parser("lm", help="language models (RLHF): SFT, reward models, PPO, DPO (needs pgrad[lm])")
    lm_sub = lm.add_subparsers(dest="lm_command", required=True, parser_class=_Parser)
    for command, (algo, summary, counted) in LM_COMMANDS.items():
        parser = lm_sub.add_parser(command, help=summary)
        _run_flags(parser, f"YAML file with run: and {algo}: sections", f"{counted} to train on in all")
        if algo == "lm_ppo":
            _inject_flag(parser, "lr_spike@512, nan_grad@256, reward_flip@512:256 (STEP counts responses)")
            _trust_reward_flag(parser)
    export = lm_sub.add_parser(
        "export", help="write a run's policy (LoRA merged) as a Hugging Face model folder that transformers loads"
    )
    export.add_argument("run_dir", type=Path, help="an lm_ppo, lm_sft or lm_dpo run folder")
    export.add_argument("--out", type=Path, required=True, help="a new folder (or a previous export, replaced)")
    export.add_argument("--checkpoint", default="best", help="best (default), latest or a checkpoint name")
    resume = lm_sub.add_parser("resume", help="the same as 'pgrad resume' (kept for scripts written before it)")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--total-steps", type=int, help="new total (extends a finished run)")
    resume.add_argument("--quiet", action="store_true")
    _trust_ray_flag(resume)
    _trust_reward_flag(resume)


def _print_summary(result, config, preset_source: str | None) -> None:
    from rich.table import Table

    from pgrad.terminal import console

    metrics = result.last_metrics
    table = Table(title=f"pgrad {config.algo} on {config.env.id}", show_header=False)
    rows = [
        ("run folder", str(result.run_dir)),
        ("env steps", f"{result.steps:,}"),
        ("updates", f"{result.updates:,}"),
        ("wall time", f"{result.seconds:.1f} s"),
        ("steps/s (overall)", f"{result.steps / max(result.seconds, 1e-9):,.0f}"),
    ]
    for key, label in [
        ("rollout/return_mean", "return (last episodes, mean)"),
        ("rollout/return_max", "return (last episodes, max)"),
        ("diagnostics/approx_kl", "approx KL"),
        ("diagnostics/entropy", "entropy"),
        ("diagnostics/explained_variance", "explained variance"),
        ("eval/return_mean", "evaluation return (deterministic)"),
    ]:
        if key in metrics:
            rows.append((label, f"{metrics[key]:.4g}"))
    if metrics.get("diagnostics/recoveries"):
        rows.append(("guard", f"{metrics['diagnostics/recoveries']:.0f} recoveries, lr x{metrics['train/lr_scale']:g}"))
    rows.append(("checkpoint", str(result.checkpoint)))
    if preset_source:
        rows.append(("defaults" if preset_source.startswith("generic defaults") else "preset", preset_source))
    if result.interrupted:
        rows.append(("stopped early", f"continue with: pgrad resume {result.run_dir}"))
    for label, value in rows:
        table.add_row(label, value)
    console().print(table)


def applied_defaults_line(algo: str, env_id: str, source: str | None, use_preset: bool) -> str:
    """The line ``pgrad train`` prints first: the preset or the defaults for the env's kind it applied, or that
    the algorithm's field defaults apply as they are (``--no-preset``, or an algorithm with no kind defaults)."""
    if source is None:
        why = "--no-preset" if not use_preset else f"no preset for {algo} on {env_id}"
        return f"defaults: pgrad's {algo} field defaults ({why}; pgrad list {algo} shows them)"
    kind = "defaults" if source.startswith("generic defaults") else "preset"
    return f"{kind}: {source}" if kind == "preset" else f"defaults: {source} (no preset for {algo} on {env_id})"


def _start(args: argparse.Namespace, algo: str, env_id: str | None, use_preset: bool, sets: list[str]) -> int:
    """Resolve the config of a new run, run it through its algorithm's runner, and print what it did."""
    from pgrad.runners import runner_for
    from pgrad.runs import default_run_dir, resolve_config

    sets = sets + ([f"guard.inject={args.inject!r}"] if getattr(args, "inject", None) else [])
    config, preset_source = resolve_config(
        algo, env_id, args.config, sets, args.seed, args.total_steps, use_preset=use_preset
    )
    _check_ray_flags(args, config.run.backend)
    _refuse_untrusted_reward(config, "the command line", getattr(args, "trust_reward_code", False))
    if not args.quiet and not config.algo.startswith("lm_"):  # a language-model run has its task, no env
        print(applied_defaults_line(algo, config.env.id, preset_source, use_preset))
    run_dir = args.run_dir or default_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; a run folder must be a directory (new or a run's own)")
    trainer = runner_for(config)(config, run_dir, console=not args.quiet, overwrite=args.overwrite)
    return _finish(trainer, trainer.train(), config, preset_source, args.quiet)


def _check_ray_flags(args: argparse.Namespace, backend: str) -> None:
    """``--workers`` and ``--address`` configure Ray's collectors: with the local backend they would do nothing."""
    given = [
        flag
        for flag, value in (
            ("--workers", getattr(args, "workers", None)),
            ("--address", getattr(args, "address", None)),
        )
        if value is not None
    ]
    if given and backend != "ray":
        raise ConfigError(f"{' and '.join(given)} apply to --backend ray (run.backend is {backend!r})")


def _finish(trainer, result, config, preset_source: str | None, quiet: bool) -> int:
    if not quiet:
        if config.algo.startswith("lm_"):
            _print_lm_summary(result, config)
        else:
            _print_summary(result, config, preset_source)
    print(f"run folder: {result.run_dir}")
    return 130 if trainer.stop_requested else 0


def _cmd_train(args: argparse.Namespace) -> int:
    sets = list(args.set)
    # the Ray flags are spellings of config fields: they go through the same validation as --set
    for flag, key in ((args.backend, "run.backend"), (args.workers, "ray.workers"), (args.address, "ray.address")):
        if flag is not None:
            sets.append(f"{key}={flag}")
    return _start(args, args.algo, args.env, not args.no_preset, sets)


def _cmd_resume(args: argparse.Namespace) -> int:
    """Continue any run folder, language models included (``pgrad lm resume`` is the same command)."""
    from pgrad.runners import runner_for
    from pgrad.runs import load_run_config, refuse_untrusted_ray

    config = load_run_config(args.run_dir, args.total_steps, getattr(args, "trust_env_code", False))
    refuse_untrusted_ray(config, args.run_dir / "config.yaml", args.trust_ray)
    _refuse_untrusted_reward(config, str(args.run_dir / "config.yaml"), args.trust_reward_code)
    trainer = runner_for(config)(config, args.run_dir, resume=True, console=not args.quiet)
    return _finish(trainer, trainer.train(), config, None, args.quiet)


def _lm_available() -> None:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:  # found, not imported: only pgrad.lm imports it
        raise PgradError("language models need transformers: pip install 'pgrad[lm]'")


def _refuse_untrusted_reward(config, source: str, trust_reward_code: bool) -> None:
    """An ``lm_ppo`` reward naming a Python function runs only with ``--trust-reward-code``."""
    from pgrad.lm.config import LMPPOConfig

    if isinstance(config.algo_config, LMPPOConfig):
        from pgrad.lm.reward_spec import refuse_untrusted_reward_code

        refuse_untrusted_reward_code(config.algo_config.code_terms, source, trust_reward_code)


def _cmd_lm(args: argparse.Namespace) -> int:
    if args.lm_command == "resume":
        return _cmd_resume(args)
    if args.lm_command == "export":
        _lm_available()
        from pgrad.lm.export import export_policy

        result = export_policy(args.run_dir, args.out, args.checkpoint)
        print(f"exported {result.checkpoint.name} (step {result.step}) of {args.run_dir}: {result.folder}")
        return 0
    command_sets = LM_COMMAND_SETS.get(args.lm_command, [])
    for item in args.set if command_sets else []:  # pgrad lm grpo --set advantage=rloo: another algorithm
        key, _, value = item.partition("=")
        if key.strip() in ("advantage", "lm_ppo.advantage") and f"advantage={value.strip()}" not in command_sets:
            raise ConfigError(f"pgrad lm {args.lm_command} sets advantage; use 'pgrad lm ppo --set {item.strip()}'")
    return _start(args, LM_COMMANDS[args.lm_command][0], None, False, command_sets + list(args.set))


def _print_lm_summary(result, config) -> None:
    unit = {"lm_ppo": "responses", "lm_rm": "pairs", "lm_sft": "demonstrations", "lm_dpo": "pairs"}[config.algo]
    section = config.algo_config
    subject = config.env.id  # the digits task; a data set's run names its file and model folder
    if section.dataset is not None and section.model.path is not None:
        subject = f"{Path(str(section.dataset)).name} ({Path(section.model.path).name})"
    print(f"{config.algo} on {subject}: {result.steps} {unit}, {result.updates} updates, {result.seconds:.1f} s")
    for key in sorted(k for k in result.last_metrics if k.startswith("eval/")):
        print(f"  {key:<26} {result.last_metrics[key]:.4g}")
    if result.interrupted:
        print(f"stopped early; continue with: pgrad resume {result.run_dir}")


def _lm_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a language-model run (its config.yaml's algo), read without importing pgrad.lm."""
    from pgrad.config import load_yaml

    path = run_dir / "config.yaml"
    return path.is_file() and str(load_yaml(path).get("algo", "")).startswith("lm_")


def _cmd_lm_eval(args: argparse.Namespace) -> int:
    not_for_lm = [flag for flag, given in (("--video", args.video), ("--randomize", args.randomize)) if given]
    if not_for_lm:
        raise ConfigError(f"{' and '.join(not_for_lm)} apply to environments; {args.run_dir} is a language-model run")
    _lm_available()
    from pgrad.lm.eval_run import evaluate_run

    result = evaluate_run(
        args.run_dir, args.checkpoint, args.prompts, args.seed, args.reward_model, args.trust_reward_code
    )
    print(
        f"evaluation ({result.prompts} held-out prompts, seed {result.seed}, one sampled response each, "
        f"{result.checkpoint.name}; rm_score is {result.scorer}):"
    )
    for key, value in result.metrics.items():
        print(f"  {key:<22} {value:.4g}")
    print(f"run folder: {args.run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pgrad.evaluate import evaluate

    if _lm_run(args.run_dir):
        return _cmd_lm_eval(args)
    if _team_run(args.run_dir):
        return _cmd_team_eval(args)
    if args.prompts is not None or args.reward_model is not None:
        raise ConfigError("--prompts and --reward-model apply to language-model runs")

    if args.seed is not None and not 0 <= args.seed <= 2**32 - 1:
        raise ConfigError(f"--seed must be in [0, 4294967295]; got {args.seed}")
    physics = None
    if args.randomize:
        from pgrad.envs.randomize import parse_perturbation
        from pgrad.runs import load_run_config

        trained = load_run_config(args.run_dir, trust_env_code=args.trust_env_code).env.randomize
        physics = parse_perturbation(args.randomize, trained)
    result = evaluate(
        args.run_dir,
        args.episodes,
        args.deterministic,
        args.checkpoint,
        args.video,
        args.seed,
        args.trust_env_code,
        physics,
    )
    mode = "deterministic" if args.deterministic else "stochastic"
    if result.physics.active:
        from pgrad.envs.randomize import describe

        mode += f", physics {describe(result.physics)}"
    print(
        f"evaluation ({mode}, {len(result.returns)} episodes, {result.checkpoint.name}): "
        f"mean return {result.mean:.2f} +- {result.std:.2f} "
        f"(min {min(result.returns):.1f}, max {max(result.returns):.1f})"
    )
    print(f"run folder: {args.run_dir}")
    for video in result.videos:
        print(f"video: {video}")
    return 0


def _team_run(run_dir: Path) -> bool:
    from pgrad.team_runs import is_team_run

    return is_team_run(run_dir)


def _cmd_team_eval(args: argparse.Namespace) -> int:
    """``pgrad eval`` of a multi-agent run: the team's return and each agent's."""
    import numpy as np

    from pgrad.team_runs import evaluate_team

    result = evaluate_team(
        args.run_dir, args.episodes, args.deterministic, args.checkpoint, args.seed, args.trust_env_code
    )
    mode = "deterministic" if args.deterministic else "stochastic"
    print(
        f"evaluation ({mode}, {len(result.returns)} episodes, {result.checkpoint.name}): team mean return "
        f"{np.mean(result.returns):.2f} +- {np.std(result.returns):.2f}"
    )
    for j, agent in enumerate(result.agents):
        print(f"  {agent}: mean return {result.per_agent[:, j].mean():.2f} +- {result.per_agent[:, j].std():.2f}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pgrad.export import export

    if _team_run(args.run_dir):
        from pgrad.team_runs import export_team

        files = export_team(args.run_dir, args.format, args.out, args.checkpoint, args.trust_env_code)
        print(f"exported {args.format}, one file per agent: {', '.join(str(f) for f in files)}")
        return 0
    path, manifest = export(args.run_dir, args.format, args.out, args.checkpoint, args.trust_env_code)
    print(f"exported {args.format}: {path} (manifest {manifest.name})")
    return 0


def did_you_mean(name: str, known: list[str]) -> str:
    """``"; did you mean 'ppo'?"`` when ``name`` is close to one of ``known`` (a typo), else ``""``."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _list_section(title: str, cls: type, algo: str | None = None) -> None:
    from pgrad.config import field_docs, listed_fields

    print(f"  [{title}]")
    # an algorithm's section: only the fields it reads (the network's recurrent ones where it is recurrent)
    for name, default, doc in field_docs(cls) if algo is None else listed_fields(algo, cls):
        print(f"    {name:<30} {default!s:<14} {doc}")


def _list_algorithm(name: str) -> None:
    from pgrad.registry import ALGORITHMS

    spec = ALGORITHMS[name]
    if spec.language_model:
        command = next(command for command, (algo, _, _) in LM_COMMANDS.items() if algo == name)
        print(f"\npgrad lm {command}: {spec.summary}")
    else:
        print(f"\n{spec.name}: {spec.summary} (actions: {', '.join(spec.action_kinds)})")
    _list_section(name, spec.config_cls, name)
    if name == "lm_ppo":
        from pgrad.lm.config import LM_GUARD_DEFAULTS

        guard_levels = ", ".join(f"{key} {value}" for key, value in LM_GUARD_DEFAULTS.items())
        print(f"  [guard] as above, except for lm ppo: {guard_levels} (per-token KL levels)")


def _list_presets(algo: str | None) -> None:
    from pgrad.presets import PATTERN_PRESETS, PRESETS

    print("\npresets (applied when --env matches; --no-preset to skip):")
    for (preset_algo, env_id), preset in {**PRESETS, **PATTERN_PRESETS}.items():
        if algo in (None, preset_algo):
            print(f"  {preset_algo:<6} {env_id:<16} {preset.source}")


def _cmd_list(args: argparse.Namespace) -> int:
    from pgrad.config import EnvConfig, GuardConfig, RayConfig, RunConfig
    from pgrad.registry import ALGORITHMS

    shared: dict[str, type] = {"env": EnvConfig, "run": RunConfig, "guard": GuardConfig, "ray": RayConfig}
    rl = [name for name, spec in ALGORITHMS.items() if not spec.language_model]
    lm = list(dict.fromkeys(name for name, _, _ in LM_COMMANDS.values()))  # grpo is lm_ppo
    what = args.what
    allowed = [*rl, *sorted(lm), *shared, "presets"]
    if what is not None and what not in allowed:
        raise ConfigError(f"list: unknown {what!r}{did_you_mean(what, allowed)} (allowed: {', '.join(allowed)})")
    if what is None:  # everything, in this order
        print("algorithms:")
        for name in rl:
            _list_algorithm(name)
        print("\nshared sections:")
        for title, cls in shared.items():
            _list_section(title, cls)
        print("\nlanguage models (pgrad lm sft | rm | ppo | grpo | dpo; each takes its section and [run]):")
        for name in lm:
            _list_algorithm(name)
        _list_presets(None)
    elif what in shared:
        _list_section(what, shared[what])
    elif what == "presets":
        _list_presets(None)
    else:
        _list_algorithm(what)
        if what in rl:
            _list_presets(what)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 0 for a clean bill, 1 when problems were found (so scripts and CI can act on it)."""
    from pgrad.monitor.doctor import doctor

    findings, text = doctor(args.run_dir)
    print(text)
    return 1 if findings else 0


def _plots_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PgradError("plots need matplotlib: pip install 'pgrad[plots]'") from None


def _cmd_report(args: argparse.Namespace) -> int:
    _plots_available()
    from pgrad.monitor.report import report

    path, panels = report(args.run_dir, args.out)
    print(f"report: {path} ({len(panels)} panels; PNGs beside it)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    _plots_available()
    from pgrad.monitor.compare import check_metric, group_runs, plot_groups, read_curve, summarize, table_lines

    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1); got {args.confidence}")
    curves = [read_curve(run_dir, args.metric) for run_dir in args.run_dirs]
    check_metric(curves, args.metric)
    for curve in curves:
        if curve.values.size:
            print(
                f"{curve.run_dir}: {int(curve.steps[-1])} steps, final {args.metric} {curve.values[-1]:.1f}, "
                f"best {curve.values.max():.1f}"
            )
        else:
            print(f"{curve.run_dir}: no {args.metric} logged yet")
    groups = group_runs(curves)
    print()
    print("\n".join(table_lines(summarize(groups, args.confidence), args.metric, args.confidence)))
    out = args.out / "compare.png" if args.out.is_dir() else args.out  # a folder: the default name inside it
    plot_groups(groups, out, args.metric, args.statistic, args.confidence)
    print(f"plot: {out}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from pgrad.runs import default_run_dir, resolve_config
    from pgrad.tune import DEFAULT_TRIAL_STEPS, open_study, run_trials, summarize_study, trial_sets

    started = time.perf_counter()
    total = DEFAULT_TRIAL_STEPS if args.total_steps is None else args.total_steps  # 0 is refused, not the default
    if args.n_jobs < 1:
        raise ConfigError(f"--n-jobs must be at least 1; got {args.n_jobs}")
    if args.n_jobs > 1 and args.storage is None:
        raise ConfigError(
            "--n-jobs needs --storage (the jobs share the study through it), e.g. --storage sqlite:///tune.db"
        )
    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1; got {args.trials}")

    def config_for(extra: list[str]):
        sets = [*trial_sets(total), *extra]
        return resolve_config(args.algo, args.env, args.config, sets, args.seed, total, use_preset=not args.no_preset)[
            0
        ]

    first = config_for(args.set)  # a bad --set or env fails here, in one line, before any trial
    default = default_run_dir(first)
    tune_dir = args.tune_dir or default.with_name(f"tune-{default.name}")
    # each job its own sampler seed: the same seed would draw the same first parameters in every job
    study = open_study(tune_dir, args.storage, args.study_name, first.run.seed + args.job, args.pruner)
    if args.n_jobs > 1:
        _tune_jobs(args, tune_dir)
    else:
        run_trials(study, args.algo, config_for, args.set, args.trials, tune_dir)
    if args.job:  # a worker of --n-jobs: the parent sums up
        return 0
    result = summarize_study(study, args.algo, config_for, args.set, tune_dir)
    states = [row["state"] for row in result.trials]
    print(
        f"{len(states)} trials in {time.perf_counter() - started:.0f} s ({states.count('complete')} complete, "
        f"{states.count('pruned')} pruned, {states.count('invalid')} invalid, {states.count('halted')} halted)"
    )
    print(f"best: trial {result.best_number}, evaluation return {result.best_value:.1f}")
    for key, value in result.best_params.items():
        print(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")
    print(f"best config: {result.best_file} (pgrad train {args.algo} --config {result.best_file})")
    return 0


def _tune_jobs(args: argparse.Namespace, tune_dir: Path) -> None:
    """``--n-jobs K``: K processes run ``pgrad tune`` on the same stored study and folder, the trials shared out;
    their lines interleave on this terminal. (Threads would share torch's global seed and threads.)"""
    import subprocess

    argv = list(args.argv)
    for flag in ("--n-jobs", "--trials", "--tune-dir", "--job"):  # replaced below
        while flag in argv:
            at = argv.index(flag)
            del argv[at : at + 2]
    argv = [item for item in argv if not item.startswith(("--n-jobs=", "--trials=", "--tune-dir=", "--job="))]
    shares = [args.trials // args.n_jobs + (job < args.trials % args.n_jobs) for job in range(args.n_jobs)]
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgrad",
                *argv,
                "--tune-dir",
                str(tune_dir),
                "--trials",
                str(share),
                "--job",
                str(job + 1),
            ]
        )
        for job, share in enumerate(shares)
        if share
    ]
    try:
        codes = [job.wait() for job in jobs]
    except KeyboardInterrupt:  # Ctrl-C reached every job too: each stops its trial with a checkpoint
        for job in jobs:
            job.wait()
        raise
    failed = [code for code in codes if code not in (0,)]
    if failed:
        raise PgradError(
            f"{len(failed)} of {len(jobs)} tuning jobs failed (exit codes {failed}); see their lines above"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; an unknown flag is named with the help of the command it was given to (argparse's
    own message would send ``pgrad lm sft --bogus`` to the top level's help)."""
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        prog = " ".join(["pgrad", args.command, *([args.lm_command] if args.command == "lm" else [])])
        print(f"pgrad: error: unrecognized arguments: {' '.join(unknown)} (see '{prog} --help')", file=sys.stderr)
        raise SystemExit(2)
    return args


def main(argv: list[str] | None = None) -> int:
    """The ``pgrad`` command: parse ``argv``, run the command, return its exit code (errors are one line, exit 2)."""
    args = _parse(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # tune --n-jobs starts its jobs with the same command
    handlers = {
        "train": _cmd_train,
        "resume": _cmd_resume,
        "eval": _cmd_eval,
        "export": _cmd_export,
        "list": _cmd_list,
        "doctor": _cmd_doctor,
        "report": _cmd_report,
        "compare": _cmd_compare,
        "tune": _cmd_tune,
        "lm": _cmd_lm,
    }
    try:
        return handlers[args.command](args)
    except TrainingHalted as exc:
        print(f"pgrad: halted: {exc}", file=sys.stderr)
        return 3
    except PgradError as exc:
        print(f"pgrad: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pgrad doctor RUN | head`: the reader has gone, so there is nobody to tell
        # Python flushes stdout once more at exit and would print a second error: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one before a run started
        print(f"pgrad: interrupted: stopped at once without a final checkpoint{_resume_hint(args)}", file=sys.stderr)
        return 130
    except OSError as exc:  # an output path that cannot be written (a read-only place, a full disk, /proc)
        print(f"pgrad: error: {_os_error_line(exc, args)}", file=sys.stderr)
        return 2


def _os_error_line(exc: OSError, args: argparse.Namespace) -> str:
    """The file an OSError names, else the command's output (a full disk names no file), and why."""
    if exc.filename is not None:
        return f"cannot write or read {exc.filename}: {exc.strerror or exc}"
    target = next((getattr(args, name) for name in ("out", "video", "run_dir") if getattr(args, name, None)), None)
    return f"{exc.strerror or exc}" + (f" (writing {target})" if target is not None else "")


def _resume_hint(args: argparse.Namespace) -> str:
    """What continues an interrupted run: 'pgrad resume' only where a checkpoint was written to resume from."""
    run_dir = getattr(args, "run_dir", None)
    if run_dir is None or args.command not in ("train", "resume", "lm"):
        return ""
    if any(Path(run_dir, "checkpoints").glob("step_*")):
        return f"; 'pgrad resume {run_dir}' continues from its last checkpoint"
    return f"; no checkpoint was written yet, so there is nothing to resume in {run_dir} (start over with --overwrite)"
