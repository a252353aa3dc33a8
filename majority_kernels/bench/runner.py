"""Running the cases: every variant of a case is built once, measured once for memory (its first, untimed call:
compilation and lazy initialisation happen there), then timed interleaved with the others of its case."""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch._dynamo
from torch import Tensor
from tqdm import tqdm

from .. import tuning
from ..backends import BACKENDS
from ..layers import MKLinear
from . import report
from .config import BenchConfig, ConvShape, LinearShape, Shape
from .measure import PeakMemory, SavedBytes, SavedTensorCounter, copy_bandwidth, time_interleaved
from .variants import (
    COMPILED,
    DENSE,
    MK,
    NAIVE,
    BuildOptions,
    KernelStep,
    Variant,
    combine_steps,
    conv_forward_steps,
    layer_variants,
    scatter_steps,
    triton_path_name,
)

MASTER_DTYPE = torch.float32
SEED = 20240207


def floor_extra_bytes(weight_numel: int, expansion: int, compute_dtype: torch.dtype) -> int:
    """docs/design.md section 6: the least traffic one training step adds to the dense layer's: read the copies
    (combine), write W_eff, write every copy's gradient (scatter; gradients are set to None between steps, so
    nothing is accumulated) and read dW_eff."""
    copies = expansion * weight_numel * MASTER_DTYPE.itemsize
    mixed = weight_numel * compute_dtype.itemsize
    return 2 * copies + 2 * mixed


def _medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(times) for name, times in samples.items()}


RATIO_KEYS = {DENSE: "ratio_dense", NAIVE: "ratio_naive", COMPILED: "ratio_compiled"}


def _ratios(time: float, baselines: dict[str, float], roles: Sequence[str]) -> dict[str, Optional[float]]:
    """time / baseline time for every baseline role (None where the run has no such baseline)."""
    return {RATIO_KEYS[role]: time / baselines[role] if role in baselines else None for role in roles}


def _baselines(roles: dict[str, str], medians: dict[str, float]) -> dict[str, float]:
    """The median time of each role's first variant."""
    baselines: dict[str, float] = {}
    for name, role in roles.items():
        baselines.setdefault(role, medians[name])
    return baselines


class LayerCase:
    """One layer shape at one expansion: the input, the output gradient, and the variants to compare (those that
    `build` makes from the dense layer)."""

    def __init__(
        self,
        shape: Shape,
        expansion: int,
        config: BenchConfig,
        build: Callable[[torch.nn.Module, int, BuildOptions], list[Variant]] = layer_variants,
    ) -> None:
        self.config = config
        dense = shape.dense_layer(config.device)
        self.x = shape.input(config.device, config.dtype).requires_grad_()
        with torch.no_grad(), config.autocast():
            self.grad_out = torch.randn_like(dense(self.x))
        self.variants = build(dense, expansion, BuildOptions(config.backends, config.compile))

    def reset(self) -> None:
        """What an optimizer's zero_grad(set_to_none=True) does, for the input too."""
        self.x.grad = None
        for variant in self.variants:
            variant.module.zero_grad(set_to_none=True)

    def forward(self, variant: Variant) -> Tensor:
        with self.config.autocast():
            return variant.module(self.x)

    def step(self, variant: Variant) -> None:
        """One training step of the layer: forward (under autocast) and backward (outside it, as usual)."""
        with variant.context():
            self.forward(variant).backward(self.grad_out)

    def memory(self, variant: Variant) -> tuple[SavedBytes, Optional[int]]:
        """Bytes saved for backward by one forward, and the step's peak allocation (CUDA)."""
        # A first step outside the measurement: compilation and autotuning allocate, and trace with fake tensors
        # that the saved-tensor hooks cannot look into (torch < 2.5 runs the hooks while tracing).
        self.reset()
        self.step(variant)
        self.reset()
        counter = SavedTensorCounter(variant.module.parameters())
        with PeakMemory(self.config.device) as peak, variant.context():
            with counter:
                output = self.forward(variant)
            output.backward(self.grad_out)
        return counter.result(), peak.bytes


def _timed(
    steps: dict[str, Callable[[], object]],
    config: BenchConfig,
    advance: Callable[[], None],
    reset: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """The steps timed in interleaved rounds, with the configured warm-up and repeats."""
    return time_interleaved(
        steps, config.device, warmup=config.warmup, repeats=config.repeats, reset=reset, on_round=advance
    )


def _time_variants(case: LayerCase, config: BenchConfig, advance: Callable[[], None]) -> dict[str, list[float]]:
    """Every variant's step of one case."""
    return _timed({v.name: lambda v=v: case.step(v) for v in case.variants}, config, advance, case.reset)


def layer_rows(
    section: str, shape: Shape, expansion: int, config: BenchConfig, bandwidth: float, advance: Callable[[], None]
) -> list[dict]:
    """Measure one layer case and return a row per variant."""
    case = LayerCase(shape, expansion, config)
    memory = {variant.name: case.memory(variant) for variant in case.variants}
    samples = _time_variants(case, config, advance)
    medians = _medians(samples)
    baselines = _baselines({v.name: v.role for v in case.variants}, medians)
    floor_bytes = floor_extra_bytes(shape.weight_numel, expansion, config.dtype)
    floor_s = floor_bytes / bandwidth
    rows = []
    for variant in case.variants:
        time, (saved, peak) = medians[variant.name], memory[variant.name]
        extra = None if variant.role == DENSE else time - baselines[DENSE]
        # The share of the floor reached: floor / extra, 1 at the floor (None where nothing is extra).
        reached = floor_s / extra if extra is not None and extra > 0 else None
        rows.append(
            {
                "section": section,
                "shape": shape.label,
                "dims": shape.as_dict(),
                "expansion": expansion,
                "variant": variant.name,
                "role": variant.role,
                "backend": variant.backend,
                "time_s": time,
                "times_s": samples[variant.name],
                **_ratios(time, baselines, (DENSE, NAIVE, COMPILED)),
                "saved_bytes": saved.total,
                "saved_param_bytes": saved.parameters,
                "saved_bytes_excl_params": saved.excluding_parameters,
                "peak_bytes": peak,
                "floor_extra_bytes": floor_bytes,
                "floor_s": floor_s,
                "extra_s": extra,
                "extra_over_floor": None if extra is None else extra / floor_s,
                "floor_reached": reached,
            }
        )
    return rows


def kernel_rows(
    weight_shape: tuple[int, int], expansion: int, config: BenchConfig, bandwidth: float, advance: Callable[[], None]
) -> list[dict]:
    """combine and scatter alone on a weight [expansion, *weight_shape]: a row per op and implementation."""
    device, dtype = config.device, config.dtype
    numel = weight_shape[0] * weight_shape[1]
    options = BuildOptions(config.backends, config.compile)
    weight = torch.randn(expansion, *weight_shape, device=device, dtype=MASTER_DTYPE)
    grad = torch.randn(weight_shape, device=device, dtype=dtype)
    # A seed tensor made once: an int seed would be copied to the device on every call.
    seed = torch.tensor(SEED, dtype=torch.int64, device=device)
    # Both ops move the copies once (read for combine, write for scatter) and one compute-dtype matrix.
    floor_bytes = numel * (expansion * MASTER_DTYPE.itemsize + dtype.itemsize)
    ops = {
        "combine": combine_steps(weight, seed, dtype, options),
        "scatter": scatter_steps(grad, seed, expansion, MASTER_DTYPE, options),
    }
    label = f"{expansion}x{weight_shape[0]}x{weight_shape[1]}"
    return [
        row
        for op, steps in ops.items()
        for row in _kernel_op_rows(op, steps, label, expansion, floor_bytes, bandwidth, config, advance)
    ]


def _kernel_op_rows(
    op: str,
    steps: list[KernelStep],
    label: str,
    expansion: int,
    floor_bytes: int,
    bandwidth: float,
    config: BenchConfig,
    advance: Callable[[], None],
) -> list[dict]:
    """Time the implementations of one op against each other: a row per implementation."""
    with torch.no_grad():
        for step in steps:  # first calls untimed: compilation
            step.run()
        samples = _timed({step.name: step.run for step in steps}, config, advance)
    medians = _medians(samples)
    baselines = _baselines({step.name: step.role for step in steps}, medians)
    floor_s = floor_bytes / bandwidth
    return [
        {
            "section": "kernels",
            "op": op,
            "shape": label,
            "expansion": expansion,
            "variant": step.name,
            "role": step.role,
            "time_s": medians[step.name],
            "times_s": samples[step.name],
            **_ratios(medians[step.name], baselines, (NAIVE, COMPILED)),
            "floor_bytes": floor_bytes,
            "floor_s": floor_s,
            "time_over_floor": medians[step.name] / floor_s,
            "bytes_per_s": floor_bytes / medians[step.name],
            "copy_bandwidth_fraction": floor_bytes / medians[step.name] / bandwidth,
        }
        for step in steps
    ]


# The crossover sweep's path pairs (forward, dW): the combine path and each fused path alone.
SWEEP_PATHS = (("combine", "scatter"), ("fused", "scatter"), ("combine", "fused"))
COMBINE, FUSED_FORWARD, FUSED_WGRAD = (triton_path_name(*paths) for paths in SWEEP_PATHS)


def _sweep_variants(dense: torch.nn.Module, expansion: int, options: BuildOptions) -> list[Variant]:
    layer = MKLinear.from_dense(dense, expansion).train()
    return [Variant(triton_path_name(*paths), MK, layer, "triton", paths) for paths in SWEEP_PATHS]


def crossover_rows(
    weight_shape: tuple[int, int], expansion: int, config: BenchConfig, advance: Callable[[], None]
) -> list[dict]:
    """One training step of MKLinear on the Triton backend for every M of config.crossover_ms: the combine path
    against the fused forward (with its fused input gradient) and against the fused dW. A row per M and path,
    then a summary row: the first M at which each fused path is no faster than the combine path (None: it
    still paid at the largest M measured), beside the thresholds in force for the device. Stops once both have
    stopped paying."""
    n, k = weight_shape
    thresholds = tuning.for_device(config.device)  # the thresholds in force, beside what was measured
    label = f"{n}x{k}"
    rows: list[dict] = []
    stops = {FUSED_FORWARD: None, FUSED_WGRAD: None}
    for m in config.crossover_ms:
        case = LayerCase(LinearShape(m, n, k), expansion, config, _sweep_variants)
        samples = _time_variants(case, config, advance)
        medians = _medians(samples)
        for name, time in medians.items():
            rows.append(
                {
                    "section": "crossover",
                    "shape": label,
                    "expansion": expansion,
                    "M": m,
                    "variant": name,
                    "time_s": time,
                    "times_s": samples[name],
                    "ratio_combine": time / medians[COMBINE],
                }
            )
        for name, stop in stops.items():
            if stop is None and medians[name] >= medians[COMBINE]:
                stops[name] = m
        if all(stop is not None for stop in stops.values()):
            break
    rows.append(
        {
            "section": "crossover",
            "shape": label,
            "expansion": expansion,
            "variant": "summary",
            "fused_forward_stops_at_m": stops[FUSED_FORWARD],
            "fused_wgrad_stops_at_m": stops[FUSED_WGRAD],
            "largest_m": rows[-1]["M"],
            "fused_forward_max_m": thresholds.triton_fused_forward_max_m,
            "fused_wgrad_max_m": thresholds.triton_fused_wgrad_max_m,
        }
    )
    return rows


def conv_fused_rows(shape: ConvShape, expansion: int, config: BenchConfig, advance: Callable[[], None]) -> list[dict]:
    """The forward alone (no autograd, under the run's autocast) of one convolution: dense, the MK path (combine
    + F.conv2d) per backend, and the fused implicit GEMM. A row per implementation, with its time over dense's and
    over the fastest MK path's ("ratio_combine")."""
    dense = shape.dense_layer(config.device)
    x = shape.input(config.device, config.dtype)
    weight = torch.randn(expansion, *dense.weight.shape, device=config.device, dtype=MASTER_DTYPE)
    seed = torch.tensor(SEED, dtype=torch.int64, device=config.device)
    steps = conv_forward_steps(dense, x, weight, seed, BuildOptions(config.backends, config.compile))
    with torch.no_grad(), config.autocast():
        for step in steps:  # first calls untimed: autotuning, cuDNN's algorithm search
            step.run()
        samples = _timed({step.name: step.run for step in steps}, config, advance)
    medians = _medians(samples)
    combine = min(medians[step.name] for step in steps if step.role == MK)
    return [
        {
            "section": "conv-fused",
            "shape": shape.label,
            "dims": shape.as_dict(),
            "expansion": expansion,
            "variant": step.name,
            "role": step.role,
            "time_s": medians[step.name],
            "times_s": samples[step.name],
            "ratio_dense": medians[step.name] / medians[DENSE],
            "ratio_combine": medians[step.name] / combine,
        }
        for step in steps
    ]


# The sections that time Triton kernels against cuBLAS / cuDNN: they run only on CUDA with the Triton backend.
GPU_TRITON_SECTIONS = ("crossover", "conv-fused")


def _gpu_triton_unavailable(config: BenchConfig) -> Optional[str]:
    """None if the GPU Triton sections can run on the device of `config`, else why not."""
    if config.device.type != "cuda":
        return f"it times Triton kernels on a CUDA GPU, and this run is on {config.device.type}"
    why = BACKENDS["triton"].unavailable(config.device)
    return None if why is None else f"it needs the Triton backend, which cannot run here: {why}"


def skipped_sections(config: BenchConfig) -> dict[str, str]:
    """The sections of `config` that cannot run on its device, each with why."""
    why = _gpu_triton_unavailable(config)
    return {} if why is None else {section: why for section in GPU_TRITON_SECTIONS if section in config.sections}


@dataclass(frozen=True)
class Case:
    """One unit of the run: `measure(bandwidth, advance)` returns its rows, calling `advance` after every timed
    round; it makes `timings` interleaved timings (kernel cases time combine and scatter apart)."""

    section: str
    label: str
    timings: int
    measure: Callable[[float, Callable[[], None]], list[dict]]


def plan(config: BenchConfig) -> list[Case]:
    """The cases of `config`, in the order they run."""
    cases = [
        Case(section, f"{section} {shape.label} e={e}", 1, functools.partial(layer_rows, section, shape, e, config))
        for section, shape_cases in (("linear", config.linear_cases), ("conv", config.conv_cases))
        for shape, e in shape_cases
    ]
    cases += [
        Case("kernels", f"kernels {e}x{n}x{k}", 2, functools.partial(kernel_rows, (n, k), e, config))
        for (n, k), e in config.kernel_cases
    ]
    if _gpu_triton_unavailable(config) is None:
        cases += [
            Case(
                "crossover",
                f"crossover {e}x{n}x{k}",
                len(config.crossover_ms),
                functools.partial(crossover_rows, (n, k), e, config),
            )
            for (n, k), e in config.crossover_cases
        ]
        cases += [
            Case(
                "conv-fused", f"conv-fused {shape.label} e={e}", 1, functools.partial(conv_fused_rows, shape, e, config)
            )
            for shape, e in config.conv_fused_cases
        ]
    return cases


def run(config: BenchConfig, progress: Optional[bool] = None) -> dict:
    """Run every case of `config`. The report: the run's description (machine, versions, copy bandwidth, the
    sections that cannot run here) under "meta" and a list of rows per section measured.

    `progress`: show a progress bar (None: when stderr is a terminal)."""
    cases = plan(config)
    total = sum(case.timings for case in cases) * (config.warmup + config.repeats)
    results: dict[str, list[dict]] = {}
    with tqdm(total=total, unit="round", disable=None if progress is None else not progress) as bar:
        bar.set_description("copy bandwidth")
        bandwidth = copy_bandwidth(config.device)
        for case in cases:
            bar.set_description(case.label)
            # A fresh compile cache per case: each compiled variant stays static-shaped and under the
            # recompile limit (all naive modules share one forward code object).
            torch._dynamo.reset()
            results.setdefault(case.section, []).extend(case.measure(bandwidth, bar.update))
    return {"meta": report.run_info(config, bandwidth, skipped_sections(config)), **results}
