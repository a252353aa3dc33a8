"""The Triton backend: the launchers of majority_kernels.triton_kernels as custom ops, their autograd, and the
linear layer's path choice; this module holds the entry points majority_kernels.backends uses.

Every kernel launch is a `torch.library.custom_op` in the `majority_kernels_triton` namespace (_registry), with a
fake kernel (torch.compile, opcheck) and, where it is differentiable, an autograd formula that regenerates P from
the same (seed, offset): combine and scatter are each other's adjoint (mixing), as are the embedding gather and
its scatter-add (embedding); the mixed linear layer has fused GEMMs of its own (linear_layer). Importing this
package registers them all. The seed is an int64 tensor on the weight's device read inside the kernels, so a step
can be captured in a CUDA graph (after a first, autotuning, call outside the capture). Inputs that are not
contiguous are copied to contiguous ones (the GEMMs take any strides for their activations); weights of every
shape are flattened.

Dtypes: float32, bfloat16, float16 and float64 in and out. P is drawn in float32 math, in float64 where a
kernel reads or writes float64. Arguments are checked once, at the public boundary (majority_kernels.functional
through _validation); the ops here assume them checked, as the C++ kernels do (which keep cheap asserts).

Convolutions run combine, then cuDNN; majority_kernels.experimental.fused_conv holds the prototype of the
alternative.
"""

from typing import Optional

import torch

from ..triton_kernels import INTERPRETING
from ._registry import NAMESPACE
from .embedding import embedding_combine
from .linear_layer import linear, linear_paths
from .mixing import combine, mixing_weights, scatter, scatter_add_

__all__ = [
    "NAMESPACE",
    "combine",
    "embedding_combine",
    "linear",
    "linear_paths",
    "mixing_weights",
    "scatter",
    "scatter_add_",
    "unavailable",
]


def unavailable(device: torch.device) -> Optional[str]:
    """None if the Triton kernels can run on `device` here, else why not."""
    if device.type == "cpu":
        if INTERPRETING:
            return None
        return (
            "Triton runs on CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before importing "
            "majority_kernels (for tests; it is slow)"
        )
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "torch sees no CUDA device"
    return f"backend 'triton' runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), not on {device}"
