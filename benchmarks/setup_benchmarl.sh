#!/usr/bin/env bash
# Builds benchmarks/.venv-benchmarl: BenchMARL (TorchRL) as the peer for issue 27's
# multi-agent benchmark, kept out of the project's own .venv (BenchMARL and TorchRL
# pin their own torch range). Idempotent: an existing venv with the pinned set is reused.
#
# Why these pins (checked with `pip download --no-deps`, Requires-Dist):
#   benchmarl 1.5.2 (newest)  -> torchrl>=0.10,<0.12, hydra-core, tqdm, numpy, torchvision, av<14
#   torchrl 0.11.1            -> torch>=2.1, tensordict>=0.11,<0.12
#   tensordict 0.11.0         -> torch (no upper bound)
# so torch 2.13.0 (the CPU wheel already on this machine's disk) satisfies all of them.
# benchmarl goes in with --no-deps: it never imports torchvision or av (grep of its source),
# and torchvision would be a CUDA-linked build against a CPU torch.
# MPE: pettingzoo 1.27 moved MPE out to the mpe2 package, which torchrl 0.11 does not know;
# bench_marl_peer.py registers mpe2's modules with pettingzoo so BenchMARL runs on mpe2,
# the same implementation pgrad uses.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-benchmarl
PY=${PYTHON:-python3.11}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install -q torch==2.13.0
"$PIP" install -q --no-deps benchmarl==1.5.2
"$PIP" install -q torch==2.13.0 torchrl==0.11.1 tensordict==0.11.0 hydra-core tqdm numpy \
    pettingzoo==1.27.0 mpe2==1.1.1 gymnasium psutil
"$VENV/bin/python" -c "import torch, torchrl, tensordict, benchmarl, mpe2; print('torch', torch.__version__, 'torchrl', torchrl.__version__, 'tensordict', tensordict.__version__, 'benchmarl', benchmarl.__version__)"
