"""Issue 28, point 1: the off-policy learner's speed. Three parts, each printing a markdown table.

- ``step``: one SAC gradient step on one thread at HalfCheetah-v5's sizes (obs 17, action 6, 256x256
  MLPs, batch 256; TD3's 400x300 beside it): the matmul floor, the per-step time (sampling included)
  and where it goes, by part of the update (timers around each part, the same calls as
  ``SAC.update``) and by kind of kernel (torch.profiler: matrix products, Adam, other ATen kernels,
  the rest is Python, autograd and dispatch). The floor: the sixteen 256x256x256 products a SAC step
  cannot avoid (critic forward 2, critic backward 4, target critics 2, actor forward on s and s' 2,
  critics on a~ 2 and their input gradients 2, actor backward 2), 16 x 2 x 256^3 flop, at this core's
  peak, measured as the best of several 2048^3 ``torch.mm`` on one thread. ``--before SRC`` runs the same
  timing with another checkout's ``src`` (e.g. /work/main/src) in turns with this one.
- ``threads``: the SAC step with 1 and 2 torch threads, alone and beside a busy loop on one core.
- ``speed``: SAC and TD3 on HalfCheetah-v5 at SB3's default hyper-parameters: pgrad as shipped, SB3 at
  its defaults (torch's default thread count: every core) and SBX (SB3 on JAX, ``sbx-rl``, from its own
  venv ``benchmarks/.venv-sbx`` that ``--make-sbx-venv`` creates; skipped when absent), steps/s after
  ``--warmup`` env steps, timed over ``--measure`` more, one run at a time, the order rotating per
  round; CPU seconds per env step beside wall, the load average before and after each run.

    .venv/bin/python benchmarks/bench_offpolicy_speed.py --parts step threads        # ~3 min
    .venv/bin/python benchmarks/bench_offpolicy_speed.py --parts step --before /work/main/src
    .venv/bin/python benchmarks/bench_offpolicy_speed.py --make-sbx-venv              # once: pip install sbx-rl
    .venv/bin/python benchmarks/bench_offpolicy_speed.py --parts speed --rounds 2    # ~20 min here

Raw results: ``benchmarks/data/offpolicy_speed28_<part>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SBX_VENV = HERE / ".venv-sbx"
OBS, ACT, BATCH = 17, 6, 256
MATMULS_PER_SAC_STEP = 16


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ---- one gradient step ----------------------------------------------------------------------------


def peak_gflops(size: int = 2048, repeats: int = 7) -> float:
    """The best of ``repeats`` ``size``^3 float32 products on the current thread count, in GFLOP/s."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def filled_buffer(size: int = 100_000) -> Any:
    import numpy as np

    from pgrad.replay import ReplayBuffer

    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(1_000_000, OBS, ACT)
    buffer.add(
        rng.standard_normal((size, OBS)).astype(np.float32),
        rng.uniform(-1, 1, (size, ACT)).astype(np.float32),
        rng.standard_normal(size).astype(np.float32),
        rng.standard_normal((size, OBS)).astype(np.float32),
        rng.random(size) < 0.01,
        np.zeros(size, bool),
    )
    return buffer


def step_ms(algo: Any, buffer: Any, blocks: int = 7, per_block: int = 40) -> dict[str, float]:
    """Sample + update, best block mean (wall and CPU), in ms: the best block is the one least disturbed by other
    processes on a shared machine."""
    import numpy as np
    import torch

    from pgrad.algos.contract import UpdateContext

    rng = np.random.default_rng(1)
    context = UpdateContext(progress=0.0, lr_scale=1.0, rng=rng)
    cpu = torch.device("cpu")
    for _ in range(20):
        algo.update(buffer.sample(BATCH, rng, cpu), context)
    walls, cpus = [], []
    for _ in range(blocks):
        wall, proc = time.perf_counter(), time.process_time()
        for _ in range(per_block):
            algo.update(buffer.sample(BATCH, rng, cpu), context)
        walls.append((time.perf_counter() - wall) / per_block * 1e3)
        cpus.append((time.process_time() - proc) / per_block * 1e3)
    return {"wall_ms": min(walls), "cpu_ms": min(cpus), "wall_median_ms": statistics.median(walls)}


def sac_parts(algo: Any, buffer: Any, steps: int = 60) -> dict[str, float]:
    """Where a SAC step goes: ``SAC.update``'s calls with a timer around each part, median ms over ``steps``."""
    import numpy as np
    import torch

    rng = np.random.default_rng(2)
    cpu = torch.device("cpu")
    times: dict[str, list[float]] = {}
    marks: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter()))

    for _ in range(steps):
        marks.clear()
        mark("start")
        batch = buffer.sample(BATCH, rng, cpu)
        mark("replay sample")
        marked_sac_step(algo, batch, mark)
        for (_, before), (name, after) in zip(marks, marks[1:], strict=False):
            times.setdefault(name, []).append((after - before) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def marked_sac_step(algo: Any, batch: Any, mark: Any) -> None:
    """``SAC.update``'s calls in its order (learned temperature), ``mark(part)`` after each part."""
    import torch

    from pgrad.algos.common import gradient_norm
    from pgrad.algos.off_policy import (
        critic_loss,
        polyak_update,
        q_statistics,
        sac_actor_loss,
        temperature_loss,
        twin_min_target,
    )

    stacked = hasattr(algo.critics, "stacked")  # the checkout before issue 28 has separate critics

    def critics(module: Any, obs: Any, actions: Any, detach: bool = False) -> Any:
        return module.stacked(obs, actions, detach_weights=detach) if stacked else module(obs, actions)

    def step(optimizer: Any, parameters: Any, loss: Any, part: str) -> None:
        for parameter in parameters:
            parameter.grad = None
        loss.backward()
        mark(f"{part} backward")
        gradient_norm(parameters)  # logged by the update (diagnostics/*_grad_norm)
        optimizer.step()
        mark(f"{part} Adam")

    actions_pi, log_prob_pi = algo.actor(batch.obs).rsample_with_log_prob()
    mark("actor forward on s (a~, log pi)")
    log_alpha = algo.temperature["log_alpha"]
    alpha = log_alpha.detach().exp()
    step(
        algo.alpha_optimizer, [log_alpha], temperature_loss(log_alpha, log_prob_pi, algo.target_entropy), "temperature"
    )
    with torch.no_grad():
        next_actions, next_log_prob = algo.actor(batch.next_obs).rsample_with_log_prob()
        next_qs = critics(algo.target_critics, batch.next_obs, next_actions)
        target = twin_min_target(batch.rewards, batch.terminated, next_qs, algo.config.gamma, next_log_prob, alpha)
    mark("target y (actor on s', target critics)")
    q_values = critics(algo.critics, batch.obs, batch.actions)
    loss_q = 0.5 * critic_loss(q_values, target)
    mark("critics forward + loss")
    step(algo.critic_optimizer, algo.critic_parameters, loss_q, "critics")
    if not stacked:
        algo.critics.requires_grad_(False)
    loss_pi = sac_actor_loss(critics(algo.critics, batch.obs, actions_pi, True), log_prob_pi, alpha)
    mark("actor loss (critics on a~)")
    step(algo.actor_optimizer, algo.actor_parameters, loss_pi, "actor")
    if not stacked:
        algo.critics.requires_grad_(True)
    polyak_update(algo.critics, algo.target_critics, algo.config.tau)
    mark("target soft update")
    q_statistics(q_values, target)
    mark("metrics")


def kernel_kinds(algo: Any, buffer: Any, steps: int = 30) -> dict[str, float]:
    """ms per step by kind of kernel (torch.profiler self CPU time); 'Python, autograd engine, dispatch' is the
    wall time no ATen kernel accounts for (the profiler's own cost lands there too)."""
    import numpy as np
    import torch
    from torch.profiler import profile

    from pgrad.algos.contract import UpdateContext

    rng = np.random.default_rng(3)
    context = UpdateContext(progress=0.0, lr_scale=1.0, rng=rng)
    cpu = torch.device("cpu")
    with profile() as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            algo.update(buffer.sample(BATCH, rng, cpu), context)
        wall = time.perf_counter() - started
    kinds = {"matrix products (mm, addmm, bmm, baddbmm)": 0.0, "Adam (fused kernel)": 0.0, "other ATen kernels": 0.0}
    calls = 0
    for event in profiler.key_averages():
        if not event.key.startswith("aten::"):
            continue
        seconds = event.self_cpu_time_total / 1e6
        calls += event.count
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
            kinds["matrix products (mm, addmm, bmm, baddbmm)"] += seconds
        elif "adam" in event.key:
            kinds["Adam (fused kernel)"] += seconds
        else:
            kinds["other ATen kernels"] += seconds
    out = {name: seconds / steps * 1e3 for name, seconds in kinds.items()}
    out["Python, autograd engine, dispatch"] = wall / steps * 1e3 - sum(out.values())
    out["ATen calls per step"] = calls / steps
    return out


def step_child(src: str) -> dict[str, Any]:
    """In a fresh process on one thread: the floor, the SAC and TD3 step times, the SAC parts (``src`` on the
    path first)."""
    sys.path.insert(0, src)
    from pgrad.threads import set_threads

    set_threads(1)
    from pgrad.algos.sac import SAC, SACConfig
    from pgrad.algos.td3 import TD3, TD3Config
    from pgrad.nets import ActionSpec

    buffer = filled_buffer()
    action = ActionSpec("continuous", ACT)
    sac, td3 = SAC(SACConfig(), OBS, action), TD3(TD3Config(), OBS, action)
    peak = peak_gflops()
    return {
        "src": src,
        "load_before": load(),
        "peak_gflops": peak,
        "floor_ms": MATMULS_PER_SAC_STEP * 2 * 256**3 / peak / 1e9 * 1e3,
        "sac": step_ms(sac, buffer),
        "td3": step_ms(td3, buffer),
        "sac_parts": sac_parts(sac, buffer),
        "sac_kernels": kernel_kinds(sac, buffer),
        "load_after": load(),
    }


def run_child(function: str, *args: str) -> dict[str, Any]:
    """``function(*args)`` of this file in a fresh interpreter (its own imports, its own thread settings)."""
    code = f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import bench_offpolicy_speed as b; "
    code += f"print('RESULT ' + json.dumps(b.{function}(*{list(args)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def step_part(args: argparse.Namespace) -> list[str]:
    sources = [str(HERE.parent / "src")] + ([args.before] if args.before else [])
    results = [run_child("step_child", src) for _ in range(args.rounds) for src in sources]
    save("step", results)
    lines = ["| src | peak GFLOP/s | floor ms | SAC ms (wall / CPU) | SAC / floor | TD3 ms (wall / CPU) | load |"]
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        lines.append(
            f"| {r['src']} | {r['peak_gflops']:.0f} | {r['floor_ms']:.2f} | {r['sac']['wall_ms']:.2f} / "
            f"{r['sac']['cpu_ms']:.2f} | {r['sac']['wall_ms'] / r['floor_ms']:.2f}x | {r['td3']['wall_ms']:.2f} / "
            f"{r['td3']['cpu_ms']:.2f} | {r['load_before']} -> {r['load_after']} |"
        )
    for r in results:
        lines += ["", f"SAC step by part, median ms ({r['src']}):", "", "| part | ms |", "|---|---:|"]
        lines += [f"| {name} | {ms:.3f} |" for name, ms in r["sac_parts"].items()]
        lines += [f"| sum | {sum(r['sac_parts'].values()):.3f} |", "", "| kernel kind | ms per step |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in r["sac_kernels"].items()]
    return lines


# ---- threads ------------------------------------------------------------------------------------


def threads_child(src: str, threads: str) -> dict[str, Any]:
    sys.path.insert(0, src)
    from pgrad.threads import set_threads

    set_threads(int(threads))
    from pgrad.algos.sac import SAC, SACConfig
    from pgrad.nets import ActionSpec

    sac = SAC(SACConfig(), OBS, ActionSpec("continuous", ACT))
    return {"threads": int(threads), "load": load(), **step_ms(sac, filled_buffer(), blocks=5)}


def busy_loop(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def threads_part(args: argparse.Namespace) -> list[str]:
    import multiprocessing

    rows = []
    for _ in range(args.rounds):
        for busy in (False, True):
            for threads in ("1", "2"):
                hog = None
                if busy:  # one core held by another process for the whole measurement
                    hog = multiprocessing.get_context("spawn").Process(target=busy_loop, args=(120.0,))
                    hog.start()
                try:
                    rows.append({"busy": busy, **run_child("threads_child", str(HERE.parent / "src"), threads)})
                finally:
                    if hog is not None:
                        hog.terminate()
                        hog.join()
    save("threads", rows)
    lines = ["| torch threads | beside a busy loop | SAC step ms (wall, best block) | median block | CPU ms | load |"]
    lines.append("|---:|---|---:|---:|---:|---|")
    for r in rows:
        lines.append(
            f"| {r['threads']} | {'yes' if r['busy'] else 'no'} | {r['wall_ms']:.2f} | {r['wall_median_ms']:.2f} | "
            f"{r['cpu_ms']:.2f} | {r['load']} |"
        )
    return lines


# ---- steps per second against SB3 and SBX ----------------------------------------------------------------

SBX_SCRIPT = """
import json, os, sys, time
import gymnasium as gym
from sbx import SAC, TD3
algo, warmup, measure = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = {"sac": SAC, "td3": TD3}[algo]("MlpPolicy", gym.make("HalfCheetah-v5"), seed=1, verbose=0)
model.learn(warmup)
load_before = os.getloadavg()[0]
wall, cpu = time.perf_counter(), time.process_time()
model.learn(measure, reset_num_timesteps=False)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print("RESULT " + json.dumps({"steps_per_second": measure / wall, "cpu_ms_per_step": 1000 * cpu / measure,
      "timed_wall": wall, "load": [load_before, os.getloadavg()[0]]}))
"""


def run_sbx(algo: str, warmup: int, measure: int) -> dict[str, Any]:
    python = SBX_VENV / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", SBX_SCRIPT, algo, str(warmup), str(measure)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return dict(json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:]))


def make_sbx_venv() -> None:
    """``benchmarks/.venv-sbx``: its own venv; pgrad's venv's site-packages is visible after its own (a .pth
    file), so pip installs only what SBX adds (JAX, Flax, optax, sbx-rl) and nothing goes into pgrad's venv."""
    import site

    subprocess.run([sys.executable, "-m", "venv", str(SBX_VENV)], check=True)
    packages = next(Path(p) for p in (SBX_VENV / "lib").glob("python*/site-packages"))
    (packages / "zz_pgrad_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(SBX_VENV / "bin" / "pip"), "install", "-q", "sbx-rl"], check=True)


def speed_part(args: argparse.Namespace) -> list[str]:
    from bench_offpolicy import Job, run_all  # run as a script: benchmarks/ is on sys.path

    libs = ["pgrad", "sb3"] + (["sbx"] if (SBX_VENV / "bin" / "python").exists() else [])
    rows: list[dict[str, Any]] = []
    for algo in args.algos:
        for round_index in range(args.rounds):
            shift = round_index % len(libs)
            for lib in libs[shift:] + libs[:shift]:
                total = args.warmup + args.measure
                if lib == "sbx":
                    result = run_sbx(algo, args.warmup, args.measure)
                else:
                    job = run_all([Job("speed", lib, algo, "HalfCheetah-v5", round_index + 1, total, args.warmup)], 1)
                    result = job[0].result
                rows.append({"algo": algo, "round": round_index + 1, "lib": lib, **result})
                print(f"{algo} {lib} round {round_index + 1}: {result.get('steps_per_second')}", flush=True)
                save("speed", rows)
    return speed_table(rows, args)


def speed_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"HalfCheetah-v5, SB3's default hyper-parameters, {args.measure} env steps timed after {args.warmup}:",
        "",
        "| algo | round | lib | steps/s | CPU ms / env step | wall s | load before -> after |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['algo']} | {r['round']} | {r['lib']} | failed: {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['algo']} | {r['round']} | {r['lib']} | {r['steps_per_second']:.1f} | {r['cpu_ms_per_step']:.2f} | "
            f"{r['timed_wall']:.0f} | {r['load'][0]:.1f} -> {r['load'][1]:.1f} |"
        )
    lines += [
        "",
        "| algo | pgrad / SB3 (median steps/s) | pgrad / SBX | SB3 CPU per step / pgrad's |",
        "|---|---:|---:|---:|",
    ]
    for algo in args.algos:

        def median(lib: str, key: str, algo: str = algo) -> float | None:
            values = [r[key] for r in rows if r["algo"] == algo and r["lib"] == lib and key in r]
            return statistics.median(values) if values else None

        pgrad, sb3, sbx = (median(lib, "steps_per_second") for lib in ("pgrad", "sb3", "sbx"))
        cpu_ratio = (median("sb3", "cpu_ms_per_step") or 0) / (median("pgrad", "cpu_ms_per_step") or 1)
        versus_sbx = f"{pgrad / sbx:.2f}x" if pgrad and sbx else "-"
        versus_sb3 = f"{pgrad / sb3:.2f}x" if pgrad and sb3 else "-"
        lines.append(f"| {algo} | {versus_sb3} | {versus_sbx} | {cpu_ratio:.2f}x |")
    return lines


# ---- main -------------------------------------------------------------------------------------------


def save(part: str, rows: Any) -> None:
    path = HERE / "data" / f"offpolicy_speed28_{part}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--parts", nargs="*", default=["step", "threads", "speed"], choices=["step", "threads", "speed"]
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="step part: another checkout's src/, timed in turns with this one")
    parser.add_argument("--algos", nargs="*", default=["sac", "td3"], choices=["sac", "td3"])
    parser.add_argument("--warmup", type=int, default=1_000, help="speed part: env steps before the timed part")
    parser.add_argument("--measure", type=int, default=3_000, help="speed part: env steps timed")
    parser.add_argument("--make-sbx-venv", action="store_true", help="create benchmarks/.venv-sbx (pip install sbx-rl)")
    args = parser.parse_args()
    if args.make_sbx_venv:
        make_sbx_venv()
        return
    parts = {"step": step_part, "threads": threads_part, "speed": speed_part}
    for part in args.parts:
        print(f"\n## {part} (load {load()})\n", flush=True)
        print("\n".join(parts[part](args)), flush=True)


if __name__ == "__main__":
    main()
