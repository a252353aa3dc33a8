import json
import os
import pathlib

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which must be switched on before
# they are defined (when majority_kernels is first imported, by a test module or helpers.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DATA = pathlib.Path(__file__).parent / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def rng_vectors() -> dict:
    """The known-answer vectors of docs/design.md section 4 (tests/data/rng_vectors.json)."""
    return json.loads((DATA / "rng_vectors.json").read_text())


@pytest.fixture
def generator() -> torch.Generator:
    """A freshly seeded generator per test for the random inputs; the seed is printed (pytest shows it when the
    test fails) so a failure can be replayed with MK_TEST_SEED=<seed>."""
    seed = int(os.environ.get("MK_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"random inputs drawn with MK_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)
