# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint docs bench clean

setup: $(STAMP)

# torch is pinned and installed first: the CPU wheel is on disk here, and an unpinned torch
# would pull gigabytes of CUDA packages. The bench extra (Stable-Baselines3) is installed too: the
# piece-by-piece PPO parity tests (tests/test_sb3_parity.py) compare against it and must run in CI. The export extra
# (onnx, onnxruntime) and the video extra (moviepy) are installed so the export and eval --video tests run in CI too;
# tune for tests/test_tune.py (Optuna), atari for the ALE test in tests/test_images.py, lm (transformers) for tests/test_lm_*.py,
# ray for tests/test_ray_*.py and tests/test_impala.py (they skip where Ray is missing), docs for the site's strict
# build in tests/test_docs.py (mkdocs-material, mkdocstrings), marl (PettingZoo, MPE2) and memory (popgym, MiniGrid) for
# the multi-agent and memory-task tests.
# The stamp depends on this Makefile too: a changed extras list below must reinstall.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,tensorboard,plots,mujoco,box2d,bench,export,video,tune,atari,lm,lm-data,ray,docs,marl,memory]"
	touch $(STAMP)

demo: setup
	rm -rf runs/demo-cartpole
	$(BIN)/pgrad train ppo --env CartPole-v1 --seed 1 --run-dir runs/demo-cartpole
	$(BIN)/pgrad eval runs/demo-cartpole --episodes 10

# The fast suite (pyproject's addopts deselect the slow marker), on PYTEST_WORKERS processes (pytest-xdist):
# about 9 minutes on 2 cores, against 15 in one process. Raise it on a machine with more cores.
PYTEST_WORKERS ?= 2
test: setup
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

# Only the long learning runs and drills; run by hand before a release or after touching an algorithm.
test-slow: setup
	$(BIN)/pytest -q -m slow

# Format check, lint, type check (mypy reads [tool.mypy] in pyproject.toml) and the complexity limits against
# their recorded baseline (tests/test_complexity.py). All four run even when one fails, so one run lists every
# problem; the target fails if any did.
lint: setup
	@status=0; \
	$(BIN)/ruff format --check src tests benchmarks examples || status=1; \
	$(BIN)/ruff check src tests benchmarks examples || status=1; \
	$(BIN)/mypy || status=1; \
	$(BIN)/pytest -q tests/test_complexity.py || status=1; \
	exit $$status

# The documentation site into site/ (tests/test_docs.py runs the same strict build); `mkdocs serve` to edit.
docs: setup
	$(BIN)/mkdocs build --strict

bench: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[bench,mujoco]"
	$(BIN)/python benchmarks/bench_ppo.py

clean:
	rm -rf $(VENV) runs site .pytest_cache
