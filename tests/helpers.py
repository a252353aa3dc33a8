"""Shared helpers of the test suite."""

import ctypes
import functools
import math
import os
import pathlib
import shutil
import subprocess

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import majority_kernels as mk
from majority_kernels import backends, train

# The backends that run on CPU tensors in this install; "reference" always, "cpu" when the extension is built.
CPU_BACKENDS = mk.available_backends("cpu")
FAST_CPU_BACKENDS = [name for name in CPU_BACKENDS if name != "reference"]

# 9: the largest with the unrolled sorting network; 11: the generic form beyond it.
EXPANSIONS = [1, 2, 3, 4, 5, 8, 9, 11]

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The device of the Triton backend's own tests: the GPU, else CPU tensors under Triton's interpreter.
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TRITON_UNAVAILABLE = backends.BACKENDS["triton"].unavailable(TRITON_DEVICE)
needs_triton = pytest.mark.skipif(
    TRITON_UNAVAILABLE is not None, reason=f"backend 'triton' cannot run here: {TRITON_UNAVAILABLE}"
)


def host_library(source: str, folder: pathlib.Path) -> ctypes.CDLL:
    """tests/<source>, C++ that includes the CUDA kernels' torch-free headers, compiled for the CPU with the host
    compiler and loaded with ctypes (skips the test where there is no C++ compiler)."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    library = folder / (pathlib.Path(source).stem + ".so")
    subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-O1",
            "-shared",
            "-fPIC",
            f"-I{ROOT / 'csrc' / 'include'}",
            f"-I{ROOT / 'csrc' / 'cuda'}",
            str(ROOT / "tests" / source),
            "-o",
            str(library),
        ],
        check=True,
    )
    return ctypes.CDLL(str(library))


def _triton_float64_dot() -> bool:
    if backends.TRITON_ERROR is not None:
        return False
    from majority_kernels.triton_kernels import tiling

    return tiling.FLOAT64_DOT


# For the Triton GEMM kernels' float64 cases: tl.dot multiplies float64 tiles from Triton 3.5 on.
needs_float64_dot = pytest.mark.skipif(
    not _triton_float64_dot(),
    reason="this Triton's tl.dot has no float64 (Triton 3.5+); the kernels' error for it is tested",
)

# Tolerances against the float64 reference, by the dtype of the compared output.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
}


def own_task_config(**fields) -> train.TrainConfig:
    """A TrainConfig for a task and model the test brings (train.custom_task, build_model): one seed, one epoch,
    e = 2 replicate, batch 8, lr 1e-3, no progress bars; `fields` override any of them."""
    defaults = dict(
        name="own",
        dataset="unused",
        model="unused",
        expansions=(2,),
        inits=("replicate",),
        seeds=1,
        epochs=1,
        batch_size=8,
        lrs=(1e-3,),
        progress=False,
    )
    return train.TrainConfig(**{**defaults, **fields})


def sgd_losses(model: torch.nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The losses of `steps` SGD steps (lr 0.1) on the mean square of model(x), gradients set to None between."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return torch.stack(losses)


def assert_compiled_training_matches_eager(make_model, x: torch.Tensor, steps: int) -> None:
    """torch.compile(fullgraph=True) of a fresh make_model() trains as eagerly: the same losses and parameters
    after `steps` SGD steps, the per-step seeds drawn from the same torch RNG state."""
    torch._dynamo.reset()
    eager_model, compiled_model = make_model(), make_model()
    compiled = torch.compile(compiled_model, fullgraph=True)
    torch.manual_seed(1)
    eager = sgd_losses(eager_model, x, steps)
    torch.manual_seed(1)
    traced = sgd_losses(compiled, x, steps)
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def random_seed(generator: torch.Generator) -> int:
    """A seed over the whole range the layers draw from (below 2^63)."""
    return int(torch.randint(0, 2**62, (), generator=generator)) * 2 + int(torch.randint(0, 2, (), generator=generator))


def random_indices(
    rows: int, shape: tuple, generator: torch.Generator, dtype: torch.dtype = torch.int64, device="cpu"
) -> torch.Tensor:
    """Random rows of a table (few rows: repeated indices), the last row always among them when there is room."""
    indices = torch.randint(0, rows, shape, generator=generator)
    if indices.numel() > 1:
        indices.view(-1)[-1] = rows - 1
    return indices.to(device=device, dtype=dtype)


def random_offset(generator: torch.Generator) -> int:
    """An element offset up to 2^40, or, one time in two, within a few counters of the 2^64 wrap."""
    offset = int(torch.randint(0, 2**40, (), generator=generator))
    return offset if offset % 2 else 2**64 - 1 - offset % 1000


def randn(
    *shape: int, generator: torch.Generator, dtype: torch.dtype = torch.float32, device="cpu", misaligned: bool = False
) -> torch.Tensor:
    """Standard normal values drawn in float64 on the CPU (the same values whatever the dtype and device), then
    cast and moved; `misaligned`: a view that starts one element into its storage."""
    count = math.prod(shape)
    flat = torch.randn(count + 1, dtype=torch.float64, generator=generator).to(device=device, dtype=dtype)
    return (flat[1:] if misaligned else flat[:count]).view(shape)


def seed_tensor(value: int = 12345, device="cpu") -> torch.Tensor:
    """A seed as the ops take it: a 0-d int64 tensor on the data's device."""
    return torch.tensor(value, dtype=torch.int64, device=device)


# randn and seed_tensor on the Triton tests' device.
triton_randn = functools.partial(randn, device=TRITON_DEVICE)
triton_seed = functools.partial(seed_tensor, device=TRITON_DEVICE)


def cpu64(tensor: torch.Tensor) -> torch.Tensor:
    """A float64 copy on the CPU (a copy even where the tensor is one already: it stays as it was)."""
    return tensor.detach().to("cpu", torch.float64, copy=True)


def assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, *inputs_dtypes: torch.dtype) -> None:
    """actual (any dtype) against the float64 expected value, with the tolerance of the least precise of actual's
    dtype and the dtypes the inputs had (a float32 input computed into float64 is float32-accurate)."""
    assert expected.dtype == torch.float64
    dtype = max((actual.dtype, *inputs_dtypes), key=lambda d: TOLERANCES[d]["rtol"])
    torch.testing.assert_close(actual.to(torch.float64), expected, **TOLERANCES[dtype])


def assert_gemm_matches_reference(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """As assert_matches_reference, for results of a float32/16 matrix product or convolution: their rounding
    grows with the reduction length, so the absolute tolerance is wider than for the elementwise kernels."""
    tolerance = dict(TOLERANCES[actual.dtype])
    tolerance["atol"] = max(tolerance["atol"], 3e-5)
    torch.testing.assert_close(actual.to(torch.float64), expected, **tolerance)


class ParameterSizedAllocations(TorchDispatchMode):
    """Records the ops that return a new tensor (not a view of an existing one) of `numel` elements."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            t.untyped_storage().data_ptr() for t in (*args, *(kwargs or {}).values()) if isinstance(t, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if (
                isinstance(t, torch.Tensor)
                and t.numel() == self.numel
                and t.untyped_storage().data_ptr() not in inputs
                and not func.is_view
            ):
                self.ops.append(str(func.overloadpacket))
        return out
