"""The ops of the `majority_kernels` namespace (`torch.ops.majority_kernels.*`), in one place: loading the
extension, and each op's fake kernel and autograd formula.

The C++ ops' schemas and device kernels live in C++ (csrc/ops.cpp, csrc/cpu, csrc/cuda); here they get what
torch.compile and autograd need (the formulas of combine, scatter and embedding_combine, and mixed_linear's weight
gradient, are shared with the Triton ops: majority_kernels._mixing_autograd), and each output is allocated as
majority_kernels._outputs says. `draw_seed` is defined here, in Python, so that it exists
without the extension. Their typed, checked entry points are majority_kernels.functional's.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import torch
from torch import Tensor

from . import _outputs as outputs
from ._grad_accumulation import remember_weight, remembered_weight
from ._mixing_autograd import embedding_autograd, linear_weight_grad, mixing_autograd
from ._validation import SEED_LIMIT


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


def _register_embedding() -> None:
    ns = "majority_kernels"

    @torch.library.register_fake(f"{ns}::embedding_combine")
    def _embedding_combine_fake(weight, indices, seed, offset, out_dtype=None):
        return outputs.embedding_combine(weight, indices, out_dtype)

    @torch.library.register_fake(f"{ns}::embedding_scatter_add_")
    def _embedding_scatter_add_fake(grad_weight, grad, indices, seed, offset):
        return None

    # The C++ kernels scatter into a table of any dtype: the fresh gradient accumulates in the weight's own.
    ops = torch.ops.majority_kernels
    backward, setup = embedding_autograd(ops.embedding_combine, ops.embedding_scatter_add_)
    torch.library.register_autograd(f"{ns}::embedding_combine", backward, setup_context=setup)


def _register_mixed_linear() -> None:
    """The CUDA-only fused small-M linear forward (csrc/cuda/mixed_linear.cu; majority_kernels.cuda_ops chooses it)."""
    name = "majority_kernels::mixed_linear"

    @torch.library.register_fake(name)
    def _fake(input, weight, bias, seed, offset):
        return outputs.linear(input, weight)

    def _setup(ctx, inputs, output):
        input, weight, bias, seed, offset = inputs
        # The input gradient recombines W_eff from the copies: an eager leaf weight is remembered (no saved tensor,
        # as in the combine op's backward), any other weight saved.
        remember_weight(ctx, weight)
        ctx.save_for_backward(input, seed, weight if ctx.expanded_weight is None else None)
        ctx.offset, ctx.expansion, ctx.weight_dtype = offset, weight.shape[0], weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def _backward(ctx, grad_output):
        input, seed, saved_weight = ctx.saved_tensors
        remembered = remembered_weight(ctx)
        weight = saved_weight if saved_weight is not None else remembered
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            mixed = torch.ops.majority_kernels.combine(weight, seed, ctx.offset, input.dtype)
            grad_input = grad_output @ mixed
        if ctx.needs_input_grad[1]:
            ops = torch.ops.majority_kernels
            grad_weight = linear_weight_grad(ops.scatter, ops.scatter_add_, remembered, grad_output, input, seed,
                                             ctx.offset, ctx.expansion, ctx.weight_dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(0).to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None

    torch.library.register_autograd(name, _backward, setup_context=_setup)


# The per-step seed draw is an op of its own, tagged as seeded-random: inside torch.compile it stays an opaque
# call of torch.randint in program order (not replaced by Inductor's own RNG), so compiled and eager training draw
# the same seeds. It takes the layer's weight and input only as anchors: AOTAutograd's common-subexpression pass
# would merge two calls with equal arguments (it spares only aten's own random ops), and (weight, input) tells
# apart different layers, and different applications of one layer.
_seed_library = torch.library.Library("majority_kernels", "FRAGMENT")
_seed_library.define("draw_seed(Tensor weight, Tensor? input=None) -> Tensor",
                     tags=(torch.Tag.nondeterministic_seeded,))


def _draw_seed(weight: Tensor, input: Optional[Tensor] = None) -> Tensor:
    return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64, device=weight.device)


_seed_library.impl("draw_seed", _draw_seed, "CompositeExplicitAutograd")
torch.library.register_fake("majority_kernels::draw_seed", lib=_seed_library)(
    lambda weight, input=None: torch.empty((), dtype=torch.int64, device=weight.device))


if HAS_EXTENSION:
    _register()
    _register_embedding()
    _register_mixed_linear()
