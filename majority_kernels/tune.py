"""`majority-kernels tune`: measures, on the GPU present, where each fused path stops paying and the best block
size of the elementwise kernels, and writes the GPU's tuning table (majority_kernels.tuning).

On one workload, by default the headline benchmark's weight (N = K = 4096, e = 4, float32 copies, bfloat16
autocast):
  triton_fused_forward_max_m, triton_fused_wgrad_max_m: one training step of MKLinear on the Triton backend per M,
      each fused path alone against combine + cuBLAS (the benchmark's crossover sweep);
  cuda_fused_max_rows: the `cuda` backend's forward per row count, its fused small-M kernel against combine +
      cuBLAS;
  combine_block, scatter_block: the Triton combine and scatter kernels alone per block size.
A threshold is the largest M (rows) measured up to which the fused path was faster at every M measured; 0 where it
lost at the first. Between two measured sizes the table keeps the smaller.
"""

from __future__ import annotations

import datetime
import functools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from . import paths, tuning
from ._version import __version__
from .backends import BACKENDS, use_backend
from .bench import measure
from .bench.config import BenchConfig, LinearShape

SEED = 20240207


@dataclass(frozen=True)
class Workload:
    """The layer the thresholds are measured on: weight [expansion, n, k], run in `dtype` (bfloat16 / float16
    under autocast, float32 master weights)."""

    n: int
    k: int
    expansion: int
    dtype: torch.dtype


# The headline benchmark's weight.
HEADLINE = Workload(n=4096, k=4096, expansion=4, dtype=torch.bfloat16)


@dataclass(frozen=True)
class Plan:
    """What one tune run measures: the M sweep of the Triton paths, the row counts of the CUDA kernel, the block
    sizes, and the rounds per timing. Sizes ascending."""

    name: str
    triton_ms: tuple[int, ...]
    cuda_rows: tuple[int, ...]
    blocks: tuple[int, ...]
    repeats: int
    warmup: int


PLANS = {
    "quick": Plan(
        "quick",
        triton_ms=(1, 16, 64, 256, 1024),
        cuda_rows=(1, 4, 16, 32, 64),
        blocks=(512, 1024, 2048),
        repeats=5,
        warmup=2,
    ),
    "full": Plan(
        "full",
        triton_ms=(1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
        cuda_rows=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128),
        blocks=(512, 1024, 2048),
        repeats=20,
        warmup=3,
    ),
}
# The block candidates: from 4 elements per thread and copy (fewer cannot fill a 16-byte float32 load) to 16;
# at 32 (4096) the kernels spill on sm_90 (tests/test_triton.py builds every candidate).


def unavailable() -> Optional[str]:
    """None if tuning can run here, else why not (one line)."""
    if not torch.cuda.is_available():
        return (
            f"majority-kernels tune needs a CUDA GPU, and torch sees none (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'no'})"
        )
    why = BACKENDS["triton"].unavailable(torch.device("cuda"))
    return None if why is None else f"majority-kernels tune needs the Triton backend, which cannot run here: {why}"


def last_paying(sizes: Sequence[int], ratios: Sequence[float]) -> int:
    """The largest size up to which every ratio (fused time / the other path's) is below 1; 0 if the first is not.
    `sizes` ascending, a ratio per size."""
    paying = 0
    for size, ratio in zip(sizes, ratios):
        if ratio >= 1:
            break
        paying = size
    return paying


def _medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(times) for name, times in samples.items()}


def _config(plan: Plan, device: torch.device, workload: Workload) -> BenchConfig:
    """The benchmark's description of the run, for its crossover sweep and its autocast."""
    return BenchConfig(
        device=device,
        dtype=workload.dtype,
        backends=("triton",),
        linear_shapes=(LinearShape(1, workload.n, workload.k),),
        linear_expansions=(workload.expansion,),
        conv_shapes=(),
        conv_expansions=(),
        repeats=plan.repeats,
        warmup=plan.warmup,
        compile=False,
        crossover_ms=plan.triton_ms,
    )


def triton_crossover(plan: Plan, device: torch.device, workload: Workload) -> tuple[int, int, list[dict]]:
    """(forward threshold, dW threshold, the sweep's rows) from the benchmark's crossover sweep."""
    from .bench import runner  # the sweep needs the Triton backend

    rows = [
        row
        for row in runner.crossover_rows(
            (workload.n, workload.k), workload.expansion, _config(plan, device, workload), lambda: None
        )
        if "M" in row
    ]

    def threshold(variant: str) -> int:
        measured = sorted((row["M"], row["ratio_combine"]) for row in rows if row["variant"] == variant)
        return last_paying([m for m, _ in measured], [ratio for _, ratio in measured])

    kept = [
        {"M": row["M"], "variant": row["variant"], "time_s": row["time_s"], "ratio_combine": row["ratio_combine"]}
        for row in rows
    ]
    return threshold(runner.FUSED_FORWARD), threshold(runner.FUSED_WGRAD), kept


def cuda_small_m(plan: Plan, device: torch.device, workload: Workload) -> tuple[Optional[int], list[dict]]:
    """(threshold, rows) of the `cuda` backend's fused small-M forward against combine + cuBLAS (forward only, the
    backward is the same on both); (None, []) where the CUDA kernels cannot run on `device`."""
    if BACKENDS["cuda"].unavailable(device) is not None:
        return None, []
    from .layers import MKLinear

    layer = MKLinear(workload.k, workload.n, expansion=workload.expansion, device=device).train()
    config = _config(plan, device, workload)
    rows, ratios = [], []
    for count in plan.cuda_rows:
        x = torch.randn(count, workload.k, device=device)

        def forward(path: str, x: torch.Tensor = x) -> Callable[[], object]:
            def run() -> object:
                with paths.force_paths(path), torch.no_grad(), config.autocast(), use_backend("cuda"):
                    return layer(x)

            return run

        steps = {"fused": forward("fused"), "combine": forward("combine")}
        for step in steps.values():  # first calls untimed
            step()
        medians = _medians(measure.time_interleaved(steps, device, warmup=plan.warmup, repeats=plan.repeats))
        ratios.append(medians["fused"] / medians["combine"])
        rows.append(
            {"rows": count, "fused_s": medians["fused"], "combine_s": medians["combine"], "ratio_combine": ratios[-1]}
        )
    return last_paying(plan.cuda_rows, ratios), rows


def block_sizes(plan: Plan, device: torch.device, workload: Workload) -> tuple[int, int, list[dict]]:
    """(combine block, scatter block, rows): the fastest block of each kernel alone on the weight."""
    from .triton_kernels import combine, scatter

    weight = torch.randn(workload.expansion, workload.n, workload.k, device=device)
    mixed = torch.empty(workload.n, workload.k, device=device, dtype=workload.dtype)
    grad = torch.randn(workload.n, workload.k, device=device, dtype=workload.dtype)
    copies = torch.empty_like(weight)
    seed = torch.tensor(SEED, dtype=torch.int64, device=device)
    steps = {}
    for block in plan.blocks:
        steps[f"combine:{block}"] = functools.partial(combine.combine, weight, seed, 0, mixed, block)
        steps[f"scatter:{block}"] = functools.partial(scatter.scatter, grad, seed, 0, copies, False, block)
    for step in steps.values():  # first calls untimed: Triton builds each block size
        step()
    medians = _medians(measure.time_interleaved(steps, device, warmup=plan.warmup, repeats=plan.repeats))
    rows = [
        {"op": name.split(":")[0], "block": int(name.split(":")[1]), "time_s": time} for name, time in medians.items()
    ]

    def fastest(op: str) -> int:
        return min((row for row in rows if row["op"] == op), key=lambda row: row["time_s"])["block"]

    return fastest("combine"), fastest("scatter"), rows


def run(
    plan: Plan, device: torch.device, workload: Workload = HEADLINE, log: Callable[[str], None] = print
) -> tuning.Table:
    """Measures the GPU of `device` (see unavailable() first) by `plan` on `workload` and returns its table."""
    import triton

    gpu = tuning.device_gpu(device)
    log(f"tuning {gpu} ({plan.name} plan)")
    forward_max_m, wgrad_max_m, crossover = triton_crossover(plan, device, workload)
    log(f"  triton fused forward pays up to M = {forward_max_m}, fused dW up to M = {wgrad_max_m}")
    cuda_max_rows, cuda_rows = cuda_small_m(plan, device, workload)
    if cuda_max_rows is None:
        why = BACKENDS["cuda"].unavailable(device)
        log(
            f"  cuda fused small-M forward: not measured ({why}); the table keeps the default "
            f"{tuning.DEFAULTS.cuda_fused_max_rows}"
        )
        cuda_measurements: object = {"not_measured": why}
    else:
        log(f"  cuda fused small-M forward pays up to {cuda_max_rows} rows")
        cuda_measurements = cuda_rows
    combine_block, scatter_block, blocks = block_sizes(plan, device, workload)
    log(f"  fastest blocks: combine {combine_block}, scatter {scatter_block}")
    thresholds = tuning.Thresholds(
        cuda_fused_max_rows=tuning.DEFAULTS.cuda_fused_max_rows if cuda_max_rows is None else cuda_max_rows,
        triton_fused_forward_max_m=forward_max_m,
        triton_fused_wgrad_max_m=wgrad_max_m,
        combine_block=combine_block,
        scatter_block=scatter_block,
    )
    measurements = {
        "workload": {
            "N": workload.n,
            "K": workload.k,
            "expansion": workload.expansion,
            "dtype": str(workload.dtype).removeprefix("torch."),
        },
        "repeats": plan.repeats,
        "warmup": plan.warmup,
        "triton_crossover": crossover,
        "cuda_small_m": cuda_measurements,
        "blocks": blocks,
    }
    return tuning.Table(
        gpu=gpu,
        majority_kernels=__version__,
        thresholds=thresholds,
        torch=torch.__version__,
        triton=triton.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        quick=plan.name != "full",
        measurements=measurements,
    )


def write(table: tuning.Table, folder: Optional[Path]) -> Path:
    """Writes the table (folder: the user's tuning folder) and reads the tuning folders again: written to one of
    them, it is in force in this process from now on."""
    path = tuning.write(table, folder)
    tuning.reload()
    return path
