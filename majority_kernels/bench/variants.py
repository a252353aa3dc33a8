"""The implementations a benchmark compares, built by small functions so that new backends and paths plug in.

A layer case runs every `Variant` that the functions in `LAYER_VARIANTS` build from one dense layer; a kernel
case runs the steps that `combine_steps` / `scatter_steps` build, a fused-convolution case those of
`conv_forward_steps`. Roles name the baselines the ratios are taken against.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, ContextManager, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional, paths, reference
from ..backends import use_backend
from ..layers import MK_LAYERS

DENSE, MK, NAIVE, COMPILED = "dense", "mk", "naive", "naive+compile"
FUSED = "fused"  # the implicit-GEMM convolution with the mixing fused in


@dataclass(frozen=True)
class Variant:
    """One implementation of a layer: `module` runs under the majority-kernels backend `backend`, if any, and
    for the Triton backend's linear layers on the forced `paths` (forward path, dW path), if any."""

    name: str
    role: str
    module: nn.Module
    backend: Optional[str] = None
    paths: Optional[tuple[str, str]] = None

    def context(self) -> ContextManager:
        # Forward and backward both run in it: the backward looks the backend and the dW path up too.
        stack = contextlib.ExitStack()
        if self.backend:
            stack.enter_context(use_backend(self.backend))
        if self.paths:
            stack.enter_context(paths.force_paths(*self.paths))
        return stack


def dense_op(layer: nn.Module) -> Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]:
    """The functional form op(x, weight, bias) of a dense nn.Linear / nn.ConvNd with zero padding mode."""
    if isinstance(layer, nn.Linear):
        return F.linear
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and layer.padding_mode == "zeros":
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(layer.kernel_size) - 1]
        return functools.partial(
            conv, stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
        )
    raise TypeError(f"no naive version of {type(layer).__name__}")


class NaiveMixed(nn.Module):
    """The hand-written SOP layer: `expansion` copies of the dense weight, mixed every forward by
    reference.naive_combine (P materialised and kept by autograd for the backward)."""

    def __init__(self, dense: nn.Module, expansion: int) -> None:
        super().__init__()
        self.op = dense_op(dense)
        weight = dense.weight.detach()
        self.weight = nn.Parameter(weight.unsqueeze(0).repeat(expansion, *([1] * weight.dim())))
        self.bias = None if dense.bias is None else nn.Parameter(dense.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x, reference.naive_combine(self.weight), self.bias)


@dataclass(frozen=True)
class BuildOptions:
    """What the builders need from the run: the resolved backends, and whether to build compiled baselines."""

    backends: tuple[str, ...]
    compile: bool


def dense_variants(dense: nn.Module, expansion: int, options: BuildOptions) -> list[Variant]:
    """The dense layer itself: the baseline of every ratio "× dense"."""
    return [Variant(DENSE, DENSE, dense)]


# The Triton backend's linear paths (forward, dW), each benchmarked forced besides its default choice.
TRITON_LINEAR_PATHS = (("combine", "scatter"), ("combine", "fused"), ("fused", "scatter"), ("fused", "fused"))


def triton_path_name(forward: str, wgrad: str) -> str:
    """The variant name of a forced path pair, e.g. mk[triton:fused,fused-dW]."""
    return f"mk[triton:{forward},{wgrad}-dW]"


def mk_variants(dense: nn.Module, expansion: int, options: BuildOptions) -> list[Variant]:
    """The MK layer (train mode), once per backend, and for a linear layer on the Triton backend once more per
    forced path pair: all of them share one module."""
    layer = MK_LAYERS[type(dense)].from_dense(dense, expansion).train()
    variants = [Variant(f"mk[{backend}]", MK, layer, backend) for backend in options.backends]
    if "triton" in options.backends and isinstance(dense, nn.Linear):
        variants += [Variant(triton_path_name(*paths), MK, layer, "triton", paths) for paths in TRITON_LINEAR_PATHS]
    return variants


def naive_variants(dense: nn.Module, expansion: int, options: BuildOptions) -> list[Variant]:
    """The naive layer eager and, unless disabled, under torch.compile (sharing its parameters)."""
    naive = NaiveMixed(dense, expansion)
    variants = [Variant(NAIVE, NAIVE, naive)]
    if options.compile:
        variants.append(Variant(COMPILED, COMPILED, torch.compile(naive, dynamic=False)))
    return variants


LAYER_VARIANTS: list[Callable[[nn.Module, int, BuildOptions], list[Variant]]] = [
    dense_variants,
    mk_variants,
    naive_variants,
]


def layer_variants(dense: nn.Module, expansion: int, options: BuildOptions) -> list[Variant]:
    """Every variant of a layer case, from the builders in LAYER_VARIANTS (later paths append theirs there)."""
    return [variant for build in LAYER_VARIANTS for variant in build(dense, expansion, options)]


class KernelStep(NamedTuple):
    """One implementation of a standalone kernel: `run()` does one call."""

    name: str
    role: str
    run: Callable[[], object]


def _naive_combine_to(weight: Tensor, dtype: torch.dtype) -> Tensor:
    return reference.naive_combine(weight).to(dtype)


def _under_backend(backend: str, op: Callable[..., Tensor], *args, **kwargs) -> Tensor:
    with use_backend(backend):
        return op(*args, **kwargs)


def _mk_steps(options: BuildOptions, op: Callable[..., Tensor], *args, **kwargs) -> list[KernelStep]:
    """The fused op, once per backend."""
    return [
        KernelStep(f"mk[{backend}]", MK, functools.partial(_under_backend, backend, op, *args, **kwargs))
        for backend in options.backends
    ]


def combine_steps(weight: Tensor, seed: Tensor, dtype: torch.dtype, options: BuildOptions) -> list[KernelStep]:
    """W_eff = combine(weight) in `dtype`: the fused op per backend, the naive one eager and compiled."""
    steps = _mk_steps(options, functional.combine, weight, seed, out_dtype=dtype)
    steps.append(KernelStep(NAIVE, NAIVE, functools.partial(_naive_combine_to, weight, dtype)))
    if options.compile:
        compiled = torch.compile(_naive_combine_to, dynamic=False)
        steps.append(KernelStep(COMPILED, COMPILED, functools.partial(compiled, weight, dtype)))
    return steps


def scatter_steps(
    grad: Tensor, seed: Tensor, expansion: int, weight_dtype: torch.dtype, options: BuildOptions
) -> list[KernelStep]:
    """Every copy's gradient P_k * grad in `weight_dtype`: the fused op per backend (P regenerated), and the naive
    backward's multiply by the P it kept from the forward."""
    steps = _mk_steps(options, functional.scatter, grad, seed, 0, expansion, out_dtype=weight_dtype)
    kept = torch.empty((expansion, *grad.shape), device=grad.device, dtype=weight_dtype).exponential_()
    kept /= kept.sum(0, keepdim=True)
    steps.append(KernelStep(NAIVE, NAIVE, functools.partial(torch.mul, kept, grad.to(weight_dtype))))
    return steps


def conv_forward_steps(
    dense: nn.Conv2d, x: Tensor, weight: Tensor, seed: Tensor, options: BuildOptions
) -> list[KernelStep]:
    """The forward of one convolution on x: the dense layer; the MK path per backend (combine writes W_eff in the
    compute dtype, then F.conv2d: cuDNN on a GPU); and the Triton implicit GEMM that mixes the copies `weight`
    as it loads its weight tiles (W_eff never in memory)."""
    from ..experimental import fused_conv  # only where Triton is there

    conv = dict(stride=dense.stride, padding=dense.padding, dilation=dense.dilation)
    steps = [KernelStep(DENSE, DENSE, functools.partial(dense, x))]
    steps += [
        KernelStep(
            f"mk[{backend}]",
            MK,
            functools.partial(
                _under_backend, backend, functional.majority_conv2d, x, weight, dense.bias, **conv, seed=seed
            ),
        )
        for backend in options.backends
    ]
    steps.append(
        KernelStep(
            "fused[triton]",
            FUSED,
            functools.partial(fused_conv.conv2d_fused_forward, x, weight, dense.bias, **conv, seed=seed),
        )
    )
    return steps
