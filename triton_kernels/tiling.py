"""What the GEMM kernels share: grouped program ordering, autotuning configurations, tl.dot operand types, and
for the GEMMs that mix their weight tiles the shared-memory estimate and the pruning of configurations by it."""

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from . import INTERPRETING

# tl.dot takes float64 tiles from Triton 3.5 on; with an older Triton the GEMM kernels serve 32- and 16-bit floats.
FLOAT64_DOT = tuple(int(part) for part in triton.__version__.split(".")[:2]) >= (3, 5)


def dot_supports(dtype: torch.dtype) -> bool:
    """Whether the installed Triton's tl.dot multiplies operands of `dtype` (float64 from 3.5 on)."""
    return dtype != torch.float64 or FLOAT64_DOT


def check_dot_dtype(dtype: torch.dtype) -> None:
    """Raises a ValueError for operands the installed Triton's tl.dot cannot multiply."""
    if not dot_supports(dtype):
        raise ValueError(f"the fused GEMM kernels need tl.dot on float64 tiles, which Triton {triton.__version__} "
                         "lacks (Triton 3.5 and later have it); float64 layers take the combine and scatter paths")


@triton.jit
def grouped_tile(pid, rows, columns, BLOCK_ROWS: tl.constexpr, BLOCK_COLUMNS: tl.constexpr, GROUP: tl.constexpr):
    """Program pid's output tile (row tile, column tile), with GROUP row tiles swept column by column: programs
    that run together share operand tiles in L2."""
    row_tiles = tl.cdiv(rows, BLOCK_ROWS)
    column_tiles = tl.cdiv(columns, BLOCK_COLUMNS)
    per_group = GROUP * column_tiles
    first_row = (pid // per_group) * GROUP
    group_rows = min(row_tiles - first_row, GROUP)
    return first_row + (pid % per_group) % group_rows, (pid % per_group) // group_rows


@triton.jit
def dot(a, b, acc, UPCAST_16BIT: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b. UPCAST_16BIT: 16-bit tiles are multiplied as float32 (the interpreter's bfloat16 dot is
    wrong). out_dtype is the accumulator's: Triton 3.6 and older default it to float32 and reject a float64 acc."""
    if UPCAST_16BIT and a.dtype.primitive_bitwidth == 16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)


def dot_options(dtype: torch.dtype) -> dict:
    """UPCAST_16BIT and INPUT_PRECISION for operands of `dtype`: float32 follows torch's matmul precision setting
    (TF32 unless it is "highest"), like F.linear; the interpreter multiplies 16-bit tiles in float32."""
    tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    return {"UPCAST_16BIT": INTERPRETING, "INPUT_PRECISION": "tf32" if tf32 and not INTERPRETING else "ieee"}


def configs(names: Sequence[str], gpu: Sequence[tuple], interpreter: tuple) -> list[triton.Config]:
    """Autotuning configurations: (*block sizes, GROUP, num_warps, num_stages) per entry; a single small one under
    the interpreter, where tuning would need a GPU to time on."""
    entries = [interpreter] if INTERPRETING else gpu
    return [triton.Config(dict(zip(names, entry[:len(names)])), num_warps=entry[-2], num_stages=entry[-1])
            for entry in entries]


def size_bucket(size: int) -> int:
    """Autotuning key for a GEMM's row count: its next power of two, so that varying batch sizes tune once per
    bucket."""
    return triton.next_power_of_2(max(size, 1))


def shared_bytes(config: triton.Config, expansion: int, weight_bytes: int, input_bytes: int) -> int:
    """Shared memory a configuration (BLOCK_M, BLOCK_P, BLOCK_Q) of a GEMM that mixes its weight tiles needs:
    num_stages - 1 buffers of the e weight tiles, num_stages of the A tile (tl.dot reads A from shared memory, one
    buffer more than the pipeline's), and the mixed tile. Against Triton 3.6's sm_90 builds of the linear kernel's
    3-stage configurations at e = 4: exact for float32 at 64 and 128 rows (where counting num_stages - 1 A buffers
    let a 240 KiB configuration pass for 208 KiB, over the 227 KiB limit), at most 3% under and 15% over elsewhere.
    Triton 3.0 pipelines less and uses less. tests/test_triton.py checks the limiting case against a build."""
    kw = config.kwargs
    tile = kw["BLOCK_Q"] * kw["BLOCK_P"]
    return ((config.num_stages - 1) * expansion * tile * weight_bytes
            + config.num_stages * kw["BLOCK_M"] * kw["BLOCK_Q"] * input_bytes + tile * input_bytes)


@functools.cache
def shared_memory_limit(device: torch.device) -> int:
    """Shared memory one program may use on `device`."""
    # ROCm's properties lack the field: its 64 KiB of LDS.
    return getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 65536)


def deepest_within(configs_: list, expansion: int, weight_bytes: int, input_bytes: int, limit: int) -> list:
    """Per tile shape (BLOCK_M, BLOCK_P, BLOCK_Q), the configuration with the most stages whose buffers
    (shared_bytes) fit in `limit` bytes (one stage always does)."""
    chosen: dict = {}
    for config in configs_:
        kw = config.kwargs
        tile = (kw["BLOCK_M"], kw["BLOCK_P"], kw["BLOCK_Q"])
        fits = shared_bytes(config, expansion, weight_bytes, input_bytes) <= limit
        best = chosen.get(tile)
        if (fits or config.num_stages == 1) and (best is None or config.num_stages > best.num_stages):
            chosen[tile] = config
    return list(chosen.values())


def deepest_fitting(configs_: list, expansion: int, weight: torch.Tensor, a: torch.Tensor) -> list:
    """deepest_within the shared memory of weight's device, for a GEMM that mixes the `expansion` copies `weight`
    as it loads them against the operand `a`."""
    return deepest_within(configs_, expansion, weight.element_size(), a.element_size(),
                          shared_memory_limit(weight.device))
