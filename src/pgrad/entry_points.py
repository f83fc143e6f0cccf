"""Importing the module of a user's ``module:attr`` entry point (an env, a network torso, a reward function).

Trust is decided before this is reached: an entry point read from a received run folder needs the matching
``--trust-...`` flag (``pgrad.runs``, ``pgrad.lm.reward_spec``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType


def import_entry_module(module_name: str) -> ModuleType:
    """Import ``module_name``; the current folder is searched last. The ``pgrad`` console script does not put it
    on ``sys.path`` by itself, so ``pgrad train ppo --env mymod:MyEnv`` next to ``mymod.py`` failed with "No
    module named 'mymod'". The folder is appended, never prepended: a file there cannot shadow an installed
    module."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top, here = module_name.split(".")[0], os.getcwd()
        if exc.name != top or here in sys.path or "" in sys.path:
            raise
        if not (Path(here, f"{top}.py").is_file() or Path(here, top).is_dir()):
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)
