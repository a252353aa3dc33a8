"""The compiled ops (`torch.ops.majority_kernels.*`): loading the extension, fake kernels, autograd formulas.

The schemas and the device kernels live in C++ (csrc/ops.cpp, csrc/cpu). Here they get what torch.compile and
autograd need (combine's and scatter's formulas: majority_kernels._mixing_autograd).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import torch

from . import _outputs as outputs
from ._grad_accumulation import copies_gradient, remember_weight, remembered_weight
from ._mixing_autograd import mixing_autograd


def _load_extension() -> Optional[str]:
    """Imports the C++ extension (which registers the ops); returns None, or why it is unavailable."""
    if importlib.util.find_spec(f"{__package__}._C") is None:
        return ("this is a pure-Python install (MK_BUILD_EXT=0); reinstall without MK_BUILD_EXT=0 to build the "
                "C++ kernels")
    try:
        importlib.import_module(f"{__package__}._C")
    except ImportError as error:  # e.g. built against another torch
        return (f"majority_kernels._C failed to load ({error}); rebuild it against the installed torch with "
                "`pip install --no-build-isolation --force-reinstall .`")
    return None


EXTENSION_ERROR = _load_extension()
HAS_EXTENSION = EXTENSION_ERROR is None
# Whether this build has the CUDA kernels (csrc/cuda): registered for the CUDA dispatch key of the ops.
HAS_CUDA_KERNELS = HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key(
    "majority_kernels::combine", "CUDA")


def cpu_capability() -> Optional[str]:
    """The instruction set of the CPU kernels this process runs (avx512, avx2 or portable: the best the processor
    has, capped by MK_CPU_CAPABILITY), or None without the extension."""
    if not HAS_EXTENSION:
        return None
    return importlib.import_module(f"{__package__}._C").cpu_capability()


def _register() -> None:
    ns = "majority_kernels"

    @torch.library.register_fake(f"{ns}::combine")
    def _combine_fake(weight, seed, offset, out_dtype=None):
        return outputs.combine(weight, out_dtype)

    @torch.library.register_fake(f"{ns}::scatter")
    def _scatter_fake(grad, seed, offset, expansion, out_dtype=None):
        return outputs.scatter(grad, expansion, out_dtype)

    @torch.library.register_fake(f"{ns}::scatter_add_")
    def _scatter_add_fake(grad_weight, grad, seed, offset):
        return None

    @torch.library.register_fake(f"{ns}::mixing_weights")
    def _mixing_weights_fake(seed, offset, expansion, numel):
        return outputs.mixing_weights(seed, expansion, numel)

    ops = torch.ops.majority_kernels
    formulas = mixing_autograd(ops.combine, ops.scatter, ops.scatter_add_)
    for name, (backward, setup) in zip(("combine", "scatter"), formulas):
        torch.library.register_autograd(f"{ns}::{name}", backward, setup_context=setup)


class _EmbeddingScatter(torch.autograd.Function):
    """The table gradient of embedding_combine: zeros with P_k * grad added to the looked-up rows in place
    (embedding_scatter_add_ touches those rows only). A Function so that double backward is right: its adjoint
    is embedding_combine again (the in-place op alone would leave the result untracked under create_graph)."""

    @staticmethod
    def forward(grad, indices, seed, offset, weight_shape, weight_dtype):
        grad_weight = grad.new_zeros(weight_shape, dtype=weight_dtype)
        torch.ops.majority_kernels.embedding_scatter_add_(grad_weight, grad, indices, seed, offset)
        return grad_weight

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, indices, seed, offset, _, _ = inputs
        ctx.save_for_backward(indices, seed)
        ctx.offset, ctx.grad_dtype = offset, grad.dtype

    @staticmethod
    def backward(ctx, grad_grad_weight):
        indices, seed = ctx.saved_tensors
        grad_grad = torch.ops.majority_kernels.embedding_combine(grad_grad_weight, indices, seed, ctx.offset,
                                                                 ctx.grad_dtype)
        return grad_grad, None, None, None, None, None


def _register_embedding() -> None:
    ns = "majority_kernels"

    @torch.library.register_fake(f"{ns}::embedding_combine")
    def _embedding_combine_fake(weight, indices, seed, offset, out_dtype=None):
        return outputs.embedding_combine(weight, indices, out_dtype)

    @torch.library.register_fake(f"{ns}::embedding_scatter_add_")
    def _embedding_scatter_add_fake(grad_weight, grad, indices, seed, offset):
        return None

    def _embedding_combine_setup(ctx, inputs, output):
        weight, indices, seed, offset, _ = inputs
        ctx.save_for_backward(indices, seed)
        remember_weight(ctx, weight)  # as in _combine_setup
        ctx.offset, ctx.weight_shape, ctx.weight_dtype = offset, weight.shape, weight.dtype

    def _embedding_combine_backward(ctx, grad):
        # The indices get no gradient. Adding into an existing .grad touches the looked-up rows only.
        indices, seed = ctx.saved_tensors
        grad_weight = copies_gradient(
            remembered_weight(ctx),
            lambda target: torch.ops.majority_kernels.embedding_scatter_add_(target, grad, indices, seed, ctx.offset),
            lambda: _EmbeddingScatter.apply(grad, indices, seed, ctx.offset, ctx.weight_shape, ctx.weight_dtype))
        return grad_weight, None, None, None, None

    torch.library.register_autograd(f"{ns}::embedding_combine", _embedding_combine_backward,
                                    setup_context=_embedding_combine_setup)


if HAS_EXTENSION:
    _register()
    _register_embedding()
