"""majority-kernels: fused kernels for Simulated Overparameterization (Majority Kernels, arXiv 2402.05033).

    import majority_kernels as mk
    model = mk.convert(model, expansion=4)   # nn.Linear / nn.ConvNd -> MK layers
    ...train...
    model = mk.collapse(model)               # back to plain layers with the mean kernels
"""

# Before the imports: modules imported below read it.
__version__ = "0.1.0"

from . import functional, reference
from .backends import available_backends, use_backend
from .convert import collapse, convert
from .layers import MKConv1d, MKConv2d, MKConv3d, MKEmbedding, MKLinear

__all__ = [
    "MKLinear", "MKConv1d", "MKConv2d", "MKConv3d", "MKEmbedding", "convert", "collapse", "functional", "reference",
    "use_backend", "available_backends", "__version__",
]
