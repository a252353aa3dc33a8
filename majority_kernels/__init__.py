"""majority-kernels: fused kernels for Simulated Overparameterization (Majority Kernels, arXiv 2402.05033).

import majority_kernels as mk
model = mk.convert(model, expansion=4)   # every weight: nn.Linear / nn.ConvNd -> MK layers, others in place
...train...
model = mk.collapse(model)               # back to plain layers with the mean kernels
"""

from . import functional, reference
from ._version import __version__
from .backends import available_backends, use_backend
from .checkpoints import dense_state_dict
from .convert import ConversionSummary, collapse, convert
from .expand import expand_parameters
from .layers import MKConv1d, MKConv2d, MKConv3d, MKEmbedding, MKLinear

__all__ = [
    "MKLinear",
    "MKConv1d",
    "MKConv2d",
    "MKConv3d",
    "MKEmbedding",
    "convert",
    "collapse",
    "expand_parameters",
    "dense_state_dict",
    "ConversionSummary",
    "functional",
    "reference",
    "use_backend",
    "available_backends",
    "__version__",
]
