import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("PGRAD_TEST", "1")


@pytest.fixture
def quiet_sets() -> list[str]:
    """Config overrides that keep test runs quiet and free of TensorBoard start-up cost."""
    return ["run.progress=false", "run.tensorboard=false"]
