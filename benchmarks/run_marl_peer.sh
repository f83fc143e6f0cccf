#!/usr/bin/env bash
# The BenchMARL peer measurement recorded in RESULTS.md ("BenchMARL on this machine").
# Seeds and algorithms run side by side (interleaved), each under nice -n 10, one JSON line
# per run appended to benchmarks/data/marl_peer_<tag>.jsonl. FRAMES and TAG override.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=benchmarks/.venv-benchmarl/bin/python
[ -x "$PY" ] || bash benchmarks/setup_benchmarl.sh
FRAMES=${FRAMES:-12000}
TAG=${TAG:-spread}
OUT=benchmarks/data/marl_peer_${TAG}.jsonl
LOGS=$(mktemp -d)
cat /proc/loadavg
pids=()
for seed in 0 1; do
    for algo in mappo ippo; do
        nice -n 10 "$PY" -W ignore benchmarks/bench_marl_peer.py --task simple_spread --algo "$algo" \
            --seed "$seed" --frames "$FRAMES" --threads 1 --out "$OUT" >"$LOGS/$algo-$seed.log" 2>&1 &
        pids+=($!)
    done
done
# MADDPG: BenchMARL's MADDPG is continuous-action only, so it runs with --actions continuous.
nice -n 10 "$PY" -W ignore benchmarks/bench_marl_peer.py --task simple_spread --algo maddpg \
    --seed 0 --frames 6000 --threads 1 --actions continuous --out "$OUT" >"$LOGS/maddpg-0.log" 2>&1 &
pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
# Thread setting: torch's default (2 threads here) against the 1-thread runs above; after
# them, so that it does not share the cores with them.
nice -n 10 "$PY" -W ignore benchmarks/bench_marl_peer.py --task simple_spread --algo mappo \
    --seed 0 --frames 6000 --threads 0 --out "$OUT" >"$LOGS/mappo-threads.log" 2>&1 || status=1
tail -n 3 "$LOGS"/*.log
cat /proc/loadavg
exit $status
