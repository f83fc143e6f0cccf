"""Robustness to physics: PPO trained with and without domain randomisation, evaluated on perturbed physics.

For each env (Hopper-v5 and HalfCheetah-v5 by default) PPO trains twice with SB3's defaults as pgrad
spells them (no preset: 1 env, n_steps 2048, minibatch 64, 10 epochs, lr 3e-4 constant, observations
and rewards normalised): once on the nominal physics, once with ``env.randomize`` (mass +-20 %,
friction +-50 %, damping +-50 %, actuator gain +-20 % by default). Each policy is then evaluated
(deterministic, ``--episodes`` episodes per point, the same evaluation seeds for every point) on a grid of
fixed scales of one parameter at a time (every body's mass x 0.5 ... x 1.5, and so on), through the same
``pgrad.evaluate.evaluate(..., physics=...)`` that ``pgrad eval RUN --randomize mass=1.3`` calls.

With several ``--seeds`` each variant trains once per seed; a cell is then the mean over seeds of each
policy's mean return (+- the spread of those means across seeds), and a verdict line per env counts the
off-nominal points where the randomised policies' mean is at least the nominal ones', and compares the
two means over all off-nominal points. ``--jobs 2`` trains two runs at once (one process each).

Writes a markdown table (mean return +- std per scale) to ``--out`` and stdout, and one figure (a
panel per env and parameter: return against scale, one line per training variant) to ``--plot``.

    .venv/bin/python benchmarks/bench_robustness.py                     # 300k steps per run, 4 runs
    .venv/bin/python benchmarks/bench_robustness.py --envs Hopper-v5 --budget 1000000 --seeds 1 2 3 --jobs 2
    .venv/bin/python benchmarks/bench_robustness.py --budget 5000 --episodes 2 --scales 0.5 1 1.5  # a smoke test
    .venv/bin/python benchmarks/bench_robustness.py --budget 1000000 --combine a.json b.json  # pool seeds of two runs

Needs the 'mujoco' and 'plots' extras. The trained runs stay under ``--runs`` (re-evaluate them with
``pgrad eval RUN --randomize mass=1.3``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np

from pgrad.config import RandomizeConfig
from pgrad.evaluate import evaluate
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import load_run_config, resolve_config

# SB3's PPO defaults as pgrad settings (run without the env's preset).
SB3_DEFAULTS = [
    "env.num_envs=1",
    "env.norm_obs=true",
    "env.norm_reward=true",
    "ppo.num_steps=2048",
    "ppo.minibatch_size=64",
    "ppo.num_epochs=10",
    "ppo.optimizer.learning_rate=3e-4",
    "ppo.optimizer.anneal_lr=false",
]
# Training only: no periodic evaluation or guard (they cost time and are not what is compared); the
# final checkpoint is what gets evaluated.
QUIET = ["run.progress=false", "run.tensorboard=false", "guard.enabled=false", "guard.eval_every=0"]
DEFAULT_RANDOMIZE = ["mass=0.2", "friction=0.5", "damping=0.5", "actuator_gain=0.2"]
PARAMETERS = ("mass", "friction", "damping", "actuator_gain")
Sweep = dict[str, list[tuple[float, float]]]  # parameter -> (mean, std) of the evaluation return at each scale


def train(env_id: str, variant: str, randomize: list[str], budget: int, seed: int, runs: Path) -> Path:
    run_dir = runs / f"{env_id}-{variant}-s{seed}"
    sets = [*QUIET, *SB3_DEFAULTS, *(f"randomize.{item}" for item in randomize)]
    config, _ = resolve_config("ppo", env_id, sets=sets, seed=seed, total_steps=budget, use_preset=False)
    # A folder left by an earlier invocation is reused: finished, it is only evaluated again; killed
    # part-way, it resumes (bit-exact) from its last checkpoint. Anything else there is started over.
    index = run_dir / "checkpoints" / "index.json"
    latest = json.loads(index.read_text()).get("latest") if index.is_file() else None
    if latest is not None and int(latest.removeprefix("step_")) >= budget:
        print(f"  {env_id} {variant} seed {seed}: already trained ({latest})", flush=True)
        return run_dir
    resume = latest is not None and load_run_config(run_dir).run.total_steps == budget
    if resume:
        config = load_run_config(run_dir)
    started = time.perf_counter()
    runner = OnPolicyRunner(config, run_dir, resume=resume, console=False, overwrite=not resume)
    result = runner.train()
    took = time.perf_counter() - started
    print(f"  trained {env_id} {variant} seed {seed}: {result.steps:,} steps in {took:.0f} s", flush=True)
    return run_dir


def train_and_sweep(job: tuple[str, str, list[str], int, int, Path, list[float], int]) -> Sweep:
    env_id, variant, randomize, budget, seed, runs, scales, episodes = job
    return sweep(train(env_id, variant, randomize, budget, seed, runs), scales, episodes)


def over_seeds(per_seed: list[Sweep]) -> Sweep:
    """One sweep from several seeds' sweeps: the mean of the policies' mean returns, and their spread
    (the std across seeds; a single seed keeps its own episodes' std)."""
    if len(per_seed) == 1:
        return per_seed[0]
    return {
        name: [
            (statistics.fmean(means), statistics.stdev(means))
            for means in zip(*([mean for mean, _ in sweep[name]] for sweep in per_seed), strict=True)
        ]
        for name in PARAMETERS
    }


def verdict(variants: dict[str, Sweep], scales: list[float]) -> str:
    """Off-nominal points where the randomised mean is at least the nominal one, and both means over them."""
    off = [i for i, scale in enumerate(scales) if scale != 1.0]
    pairs = [(variants["randomised"][n][i][0], variants["nominal"][n][i][0]) for n in PARAMETERS for i in off]
    wins = sum(randomised >= nominal for randomised, nominal in pairs)
    mean_r, mean_n = (statistics.fmean(values) for values in zip(*pairs, strict=True))
    # The same means as a fraction of each variant's own return at nominal physics: how much of its level a
    # policy keeps away from nominal, whatever that level is (a second reading, not the verdict's).
    nominal_point = scales.index(1.0) if 1.0 in scales else None
    kept = ""
    if nominal_point is not None:
        # every parameter's sweep has the same x1 point (nominal physics): take the first's
        at_nominal = {v: variants[v][PARAMETERS[0]][nominal_point][0] for v in variants}
        kept = (
            f"; kept of its own nominal return: randomised {mean_r / at_nominal['randomised']:.0%}, "
            f"nominal {mean_n / at_nominal['nominal']:.0%}"
        )
    return (
        f"randomised >= nominal at {wins} of {len(pairs)} off-nominal points; mean over them: "
        f"randomised {mean_r:.0f}, nominal {mean_n:.0f}{kept}"
    )


def sweep(run_dir: Path, scales: list[float], episodes: int) -> dict[str, list[tuple[float, float]]]:
    """(mean, std) of the evaluation return at every scale of every parameter, the others nominal."""
    out: dict[str, list[tuple[float, float]]] = {}
    for name in PARAMETERS:
        out[name] = []
        for scale in scales:
            physics = RandomizeConfig(**{name: [scale, scale]})  # a fixed scale; 1.0 is the nominal env
            result = evaluate(run_dir, episodes=episodes, deterministic=True, physics=physics)
            out[name].append((result.mean, result.std))
    return out


def markdown(results: dict[str, dict[str, dict[str, list[tuple[float, float]]]]], scales: list[float]) -> list[str]:
    lines = []
    for env_id, variants in results.items():
        lines += [f"### {env_id}: evaluation return against the scale of one parameter", ""]
        lines.append("| parameter | trained | " + " | ".join(f"x{scale:g}" for scale in scales) + " |")
        lines.append("|---|---|" + "---:|" * len(scales))
        for name in PARAMETERS:
            for variant, sweeps in variants.items():
                cells = " | ".join(f"{mean:.0f} +- {std:.0f}" for mean, std in sweeps[name])
                lines.append(f"| {name} | {variant} | {cells} |")
        lines.append("")
    return lines


def plot(results: dict[str, dict[str, dict[str, list[tuple[float, float]]]]], scales: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(results)
    figure, axes = plt.subplots(
        len(envs), len(PARAMETERS), figsize=(4 * len(PARAMETERS), 3.2 * len(envs)), squeeze=False
    )
    for row, env_id in enumerate(envs):
        for column, name in enumerate(PARAMETERS):
            axis = axes[row][column]
            for variant, sweeps in results[env_id].items():
                means, stds = (np.array(values) for values in zip(*sweeps[name], strict=True))
                axis.errorbar(scales, means, yerr=stds, marker="o", capsize=3, label=variant)
            axis.axvline(1.0, color="grey", linewidth=0.5)
            axis.set_title(f"{env_id}: {name}")
            axis.set_xlabel("scale of the nominal value")
            if column == 0:
                axis.set_ylabel("evaluation return")
    axes[0][0].legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def read_sweeps(path: Path, scales: list[float]) -> dict[tuple[str, str, int], Sweep]:
    """The sweeps of a raw file this script wrote, by (env, variant, seed). Files from before ``--seeds``
    hold one seed's sweeps under "results" only."""
    raw = json.loads(path.read_text())
    if raw["scales"] != scales:
        raise SystemExit(f"{path}: scales {raw['scales']} differ from --scales {scales}")
    if "per_seed" not in raw:
        only = raw.get("seeds", [1])[0]
        return {
            (env, variant, only): sweep
            for env, by_variant in raw["results"].items()
            for variant, sweep in by_variant.items()
        }
    return {
        (env, variant, int(seed)): sweep
        for env, by_variant in raw["per_seed"].items()
        for variant, by_seed in by_variant.items()
        for seed, sweep in by_seed.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=300_000, help="env steps per training run")
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once, each its own process")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per grid point")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.25, 1.5])
    parser.add_argument(
        "--randomize", nargs="+", default=DEFAULT_RANDOMIZE, metavar="FIELD=VALUE", help="env.randomize of the run"
    )
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/out/robustness"), help="run folders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/robustness.md"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/plots/robustness.png"))
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="train nothing: pool the per-seed sweeps of earlier runs' raw files (same scales; a later file's seed "
        "replaces an earlier one's) into one table, verdict and plot; --budget and --randomize label the header",
    )
    args = parser.parse_args()

    per_seed: dict[str, dict[str, dict[int, Sweep]]] = {}
    if args.combine:
        for path in args.combine:
            for (env_id, variant, seed), result in read_sweeps(path, args.scales).items():
                per_seed.setdefault(env_id, {}).setdefault(variant, {})[seed] = result
        args.seeds = sorted({seed for by_variant in per_seed.values() for s in by_variant.values() for seed in s})
    else:
        variants = {"nominal": [], "randomised": args.randomize}
        jobs = [
            (env_id, variant, randomize, args.budget, seed, args.runs, args.scales, args.episodes)
            for env_id in args.envs
            for seed in args.seeds
            for variant, randomize in variants.items()
        ]
        with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            sweeps = pool.map(train_and_sweep, jobs, chunksize=1)
        for job, result in zip(jobs, sweeps, strict=True):
            per_seed.setdefault(job[0], {}).setdefault(job[1], {})[job[4]] = result
    results = {
        env_id: {variant: over_seeds(list(by_seed.values())) for variant, by_seed in by_variant.items()}
        for env_id, by_variant in per_seed.items()
    }
    header = [
        "## Robustness: PPO with and without domain randomisation",
        "",
        f"{args.budget:,} steps per run, seeds {', '.join(map(str, args.seeds))}, "
        f"SB3's PPO defaults (`{' '.join(SB3_DEFAULTS)}`); "
        f"randomised: `{' '.join(args.randomize)}`. Deterministic evaluation, {args.episodes} episodes per point, "
        "one parameter scaled at a time (every element by the same factor), the others nominal.",
        "",
    ]
    lines = header + markdown(results, args.scales)
    lines += [f"- {env_id}: {verdict(variants_of_env, args.scales)}" for env_id, variants_of_env in results.items()]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    raw = {"scales": args.scales, "seeds": args.seeds, "results": results, "per_seed": per_seed}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    plot(results, args.scales, args.plot)
    print(f"table: {args.out}; plot: {args.plot}")


if __name__ == "__main__":
    main()
