"""The ops of the `majority_kernels` namespace (`torch.ops.majority_kernels.*`), in one place: each op's schema,
fake kernel and autograd formula, then the extension that brings their kernels.

Each op is defined here with its schema and its fake kernel (torch.compile, opcheck; the output allocated as
majority_kernels._outputs says), then given its autograd formula: combine's, scatter's and embedding_combine's,
and mixed_linear's weight gradient, are shared with the Triton ops (majority_kernels._mixing_autograd). The
device kernels are C++ (csrc/cpu, csrc/cuda), registered for these schemas with TORCH_LIBRARY_IMPL when the
extension majority_kernels._C loads, after the definitions. `draw_seed` has its kernel here, in Python, so that
it exists without the extension. The typed, checked entry points are majority_kernels.functional's.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Optional

import torch
from torch import Tensor

from . import _outputs as outputs
from ._grad_accumulation import remember_weight, remembered_weight
from ._mixing_autograd import embedding_autograd, linear_weight_grad, mixing_autograd
from ._validation import SEED_LIMIT

_library = torch.library.Library("majority_kernels", "DEF")


def _define(schema: str, fake: Callable, tags: tuple = ()) -> None:
    """Defines majority_kernels::<schema> with its fake kernel."""
    _library.define(schema, tags=tags)
    torch.library.register_fake(f"majority_kernels::{schema.split('(', 1)[0]}", lib=_library)(fake)


def _no_output(*args) -> None:
    return None


# W_eff[i] = sum_k P[k, i] * weight[k, i], in out_dtype (default: weight's dtype).
_define(
    "combine(Tensor weight, Tensor seed, int offset, ScalarType? out_dtype=None) -> Tensor",
    lambda weight, seed, offset, out_dtype=None: outputs.combine(weight, out_dtype),
)
# grad_weight[k, i] = P[k, i] * grad[i], a new tensor of shape [expansion, *grad.shape].
_define(
    "scatter(Tensor grad, Tensor seed, int offset, int expansion, ScalarType? out_dtype=None) -> Tensor",
    lambda grad, seed, offset, expansion, out_dtype=None: outputs.scatter(grad, expansion, out_dtype),
)
# grad_weight[k, i] += P[k, i] * grad[i], in place (gradient accumulation without a temporary).
_define("scatter_add_(Tensor(a!) grad_weight, Tensor grad, Tensor seed, int offset) -> ()", _no_output)
# P itself, float32 [expansion, numel]: for tests and for users who want to look at it.
_define(
    "mixing_weights(Tensor seed, int offset, int expansion, int numel) -> Tensor",
    lambda seed, offset, expansion, numel: outputs.mixing_weights(seed, expansion, numel),
)
# The embedding lookup of the mixed table: out[..., d] = sum_k P[k, r * dim + d] * weight[k, r, d] for the rows
# r = indices[...] only (P of each element from its flat index in the full [rows, dim] table).
_define(
    "embedding_combine(Tensor weight, Tensor indices, Tensor seed, int offset, ScalarType? out_dtype=None) -> Tensor",
    lambda weight, indices, seed, offset, out_dtype=None: outputs.embedding_combine(weight, indices, out_dtype),
)
# Its gradient, added in place: grad_weight[k, r, d] += P[k, r * dim + d] * grad[..., d] for every lookup of r.
_define(
    "embedding_scatter_add_(Tensor(a!) grad_weight, Tensor grad, Tensor indices, Tensor seed, int offset) -> ()",
    _no_output,
)
# input [rows, in] @ combine(weight [e, out, in])^T + bias, in input's dtype, W_eff never stored: the CUDA-only
# fused small-M forward (csrc/cuda/mixed_linear.cu; majority_kernels.cuda_ops chooses it).
_define(
    "mixed_linear(Tensor input, Tensor weight, Tensor? bias, Tensor seed, int offset) -> Tensor",
    lambda input, weight, bias, seed, offset: outputs.linear(input, weight),
)
# The per-step seed draw is an op of its own, tagged as seeded-random: inside torch.compile it stays an opaque
# call of torch.randint in program order (not replaced by Inductor's own RNG), so compiled and eager training draw
# the same seeds. It takes the layer's weight and input only as anchors: AOTAutograd's common-subexpression pass
# would merge two calls with equal arguments (it spares only aten's own random ops), and (weight, input) tells
# apart different layers, and different applications of one layer.
_define(
    "draw_seed(Tensor weight, Tensor? input=None) -> Tensor",
    lambda weight, input=None: torch.empty((), dtype=torch.int64, device=weight.device),
    tags=(torch.Tag.nondeterministic_seeded,),
)


def _draw_seed(weight: Tensor, input: Optional[Tensor] = None) -> Tensor:
    return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64, device=weight.device)


_library.impl("draw_seed", _draw_seed, "CompositeExplicitAutograd")

_ops = torch.ops.majority_kernels
for _name, (_backward, _setup) in zip(
    ("combine", "scatter"), mixing_autograd(_ops.combine, _ops.scatter, _ops.scatter_add_)
):
    torch.library.register_autograd(f"majority_kernels::{_name}", _backward, setup_context=_setup)
# The C++ kernels scatter into a table of any dtype: the fresh gradient accumulates in the weight's own.
_backward, _setup = embedding_autograd(_ops.embedding_combine, _ops.embedding_scatter_add_)
torch.library.register_autograd("majority_kernels::embedding_combine", _backward, setup_context=_setup)


def _mixed_linear_setup(ctx, inputs, output):
    input, weight, bias, seed, offset = inputs
    # The input gradient recombines W_eff from the copies: an eager leaf weight is remembered (no saved tensor,
    # as in the combine op's backward), any other weight saved.
    remember_weight(ctx, weight)
    ctx.save_for_backward(input, seed, weight if ctx.expanded_weight is None else None)
    ctx.offset, ctx.expansion, ctx.weight_dtype = offset, weight.shape[0], weight.dtype
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _mixed_linear_backward(ctx, grad_output):
    input, seed, saved_weight = ctx.saved_tensors
    remembered = remembered_weight(ctx)
    weight = saved_weight if saved_weight is not None else remembered
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = grad_output @ _ops.combine(weight, seed, ctx.offset, input.dtype)
    if ctx.needs_input_grad[1]:
        grad_weight = linear_weight_grad(
            _ops.scatter,
            _ops.scatter_add_,
            remembered,
            grad_output,
            input,
            seed,
            ctx.offset,
            ctx.expansion,
            ctx.weight_dtype,
        )
    if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
        grad_bias = grad_output.sum(0).to(ctx.bias_dtype)
    return grad_input, grad_weight, grad_bias, None, None


torch.library.register_autograd(
    "majority_kernels::mixed_linear", _mixed_linear_backward, setup_context=_mixed_linear_setup
)


def _load_extension() -> Optional[str]:
    """Imports the C++ extension (which registers the kernels); returns None, or why it is unavailable."""
    if importlib.util.find_spec(f"{__package__}._C") is None:
        return (
            "this is a pure-Python install (MK_BUILD_EXT=0); reinstall without MK_BUILD_EXT=0 to build the C++ kernels"
        )
    try:
        importlib.import_module(f"{__package__}._C")
    except ImportError as error:  # e.g. built against another torch
        return (
            f"majority_kernels._C failed to load ({error}); rebuild it against the installed torch with "
            "`pip install --no-build-isolation --force-reinstall .`"
        )
    return None


EXTENSION_ERROR = _load_extension()
HAS_EXTENSION = EXTENSION_ERROR is None
# Whether this build has the CUDA kernels (csrc/cuda): registered for the CUDA dispatch key of the ops.
HAS_CUDA_KERNELS = HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("majority_kernels::combine", "CUDA")


def cpu_capability() -> Optional[str]:
    """The instruction set of the CPU kernels this process runs (avx512, avx2 or portable: the best the processor
    has, capped by MK_CPU_CAPABILITY), or None without the extension."""
    if not HAS_EXTENSION:
        return None
    return importlib.import_module(f"{__package__}._C").cpu_capability()
