"""Triton kernels of majority-kernels (installed as majority_kernels.triton_kernels) and their launchers.

One module per op family: mixing (the RNG and Dirichlet math of docs/design.md section 4, shared by all), combine,
scatter, linear (GEMM with the combination fused into the weight-tile load), weight_grad (dW GEMM with the
scatter fused into its epilogue), embedding, conv (implicit-GEMM convolution forward with the combination fused
in: a prototype for the benchmark). Launchers take contiguous torch tensors and write into outputs they are given
(conv's checks its arguments and returns its output); majority_kernels.triton_ops wraps them as custom ops.
"""

import os

import triton

# Whether the kernels are defined for Triton's CPU interpreter (TRITON_INTERPRET=1 when this was imported): they
# then run on CPU tensors, with a single small tile configuration and tl.dot on float32 tiles. Older Triton (3.0, for
# one) has no `knobs` and reads the environment variable itself, as done here.
INTERPRETING = (bool(triton.knobs.runtime.interpret) if hasattr(triton, "knobs")
                else os.environ.get("TRITON_INTERPRET", "0") == "1")
