"""What a benchmark run measures: the shapes, expansions, dtype, device and backends, and the default sets."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager, Union

import torch
from torch import Tensor, nn

# "crossover": the M sweep of the Triton backend's linear paths; "conv-fused": the convolution forward with the
# mixing fused into an implicit GEMM against combine + cuDNN. Both CUDA with Triton only.
SECTIONS = ("linear", "conv", "kernels", "crossover", "conv-fused")

# Row counts M of the crossover sweep (it stops early once both fused paths have stopped paying).
CROSSOVER_MS = (1, 4, 16, 64, 256, 1024, 4096, 8192)


@dataclass(frozen=True)
class LinearShape:
    """x: [m, k] through nn.Linear(k, n): the weight is [n, k]."""

    m: int
    n: int
    k: int

    FORMAT = "MxNxK"

    @property
    def label(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"

    @property
    def weight_numel(self) -> int:
        return self.n * self.k

    def dense_layer(self, device: torch.device) -> nn.Module:
        return nn.Linear(self.k, self.n, device=device)

    def input(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.randn(self.m, self.k, device=device, dtype=dtype)

    def as_dict(self) -> dict[str, int]:
        return {"M": self.m, "N": self.n, "K": self.k}


@dataclass(frozen=True)
class ConvShape:
    """x: [batch, in_channels, height, width] through a square `kernel` nn.Conv2d, stride 1, "same" padding."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: int

    FORMAT = "BxCINxCOUTxHxWxKERNEL"

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.in_channels}x{self.out_channels}x{self.height}x{self.width}x{self.kernel}"

    @property
    def weight_numel(self) -> int:
        return self.out_channels * self.in_channels * self.kernel * self.kernel

    def dense_layer(self, device: torch.device) -> nn.Module:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel, padding=self.kernel // 2, device=device)

    def input(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.randn(self.batch, self.in_channels, self.height, self.width, device=device, dtype=dtype)

    def as_dict(self) -> dict[str, int]:
        return {
            "batch": self.batch,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "height": self.height,
            "width": self.width,
            "kernel": self.kernel,
        }


Shape = Union[LinearShape, ConvShape]


def parse_shapes(text: str, shape_type: type[Shape]) -> tuple[Shape, ...]:
    """ "256x1024x1024,64x512x512" -> shapes; ValueError naming the bad item otherwise."""
    fields = len(shape_type.__dataclass_fields__)
    shapes = []
    for item in text.split(","):
        sizes = item.strip().lower().split("x")
        if len(sizes) != fields or not all(size.isdigit() and int(size) > 0 for size in sizes):
            raise ValueError(
                f"bad shape {item.strip()!r}: expected {shape_type.FORMAT} with {fields} positive "
                f"integers, items separated by commas"
            )
        shapes.append(shape_type(*map(int, sizes)))
    return tuple(shapes)


@dataclass(frozen=True)
class Defaults:
    """The default set for a device type. Expansions apply to every shape of their section."""

    linear_shapes: tuple[LinearShape, ...]
    linear_expansions: tuple[int, ...]
    conv_shapes: tuple[ConvShape, ...]
    conv_expansions: tuple[int, ...]
    dtype: torch.dtype


DEFAULTS: dict[str, Defaults] = {
    # Sized so that the whole default run (torch.compile warm-ups included) takes a few minutes on 2 CPU cores.
    "cpu": Defaults(
        linear_shapes=(LinearShape(256, 1024, 1024), LinearShape(64, 512, 512)),
        linear_expansions=(2, 4, 8),
        conv_shapes=(ConvShape(32, 64, 64, 32, 32, 3),),
        conv_expansions=(4,),
        dtype=torch.float32,
    ),
    "cuda": Defaults(
        linear_shapes=(LinearShape(8192, 4096, 4096), LinearShape(2048, 1024, 1024)),
        linear_expansions=(2, 4, 8),
        conv_shapes=(ConvShape(64, 128, 128, 56, 56, 3),),
        conv_expansions=(4,),
        dtype=torch.bfloat16,
    ),
}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. `dtype` is the compute dtype: float32 runs plainly, bfloat16 / float16 run under
    torch.autocast with float32 master weights. `backends` are resolved backend names ("cpu", "reference", ...)."""

    device: torch.device
    dtype: torch.dtype
    backends: tuple[str, ...]
    linear_shapes: tuple[LinearShape, ...]
    linear_expansions: tuple[int, ...]
    conv_shapes: tuple[ConvShape, ...]
    conv_expansions: tuple[int, ...]
    sections: frozenset[str] = field(default_factory=lambda: frozenset(SECTIONS))
    repeats: int = 20
    warmup: int = 3
    compile: bool = True
    output: Path = Path("benchmarks/results/bench")
    crossover_ms: tuple[int, ...] = CROSSOVER_MS

    def autocast(self) -> ContextManager:
        """Where the forward runs: torch.autocast to the compute dtype, or nothing for float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def linear_cases(self) -> list[tuple[LinearShape, int]]:
        if "linear" not in self.sections:
            return []
        return [(shape, e) for shape in self.linear_shapes for e in self.linear_expansions]

    @property
    def conv_cases(self) -> list[tuple[ConvShape, int]]:
        return self._conv_cases("conv")

    @property
    def conv_fused_cases(self) -> list[tuple[ConvShape, int]]:
        """The fused convolution's forward on the conv shapes and expansions."""
        return self._conv_cases("conv-fused")

    def _conv_cases(self, section: str) -> list[tuple[ConvShape, int]]:
        if section not in self.sections:
            return []
        return [(shape, e) for shape in self.conv_shapes for e in self.conv_expansions]

    @property
    def kernel_cases(self) -> list[tuple[tuple[int, int], int]]:
        """combine / scatter alone on the linear shapes' weights: ((N, K), e), each weight shape once."""
        return self._weight_cases("kernels")

    @property
    def crossover_cases(self) -> list[tuple[tuple[int, int], int]]:
        """The M sweep on the linear shapes' weights: ((N, K), e), each weight shape once."""
        return self._weight_cases("crossover")

    def _weight_cases(self, section: str) -> list[tuple[tuple[int, int], int]]:
        if section not in self.sections:
            return []
        return list(dict.fromkeys(((s.n, s.k), e) for s in self.linear_shapes for e in self.linear_expansions))
