"""Triton kernels of majority-kernels (installed as majority_kernels.triton_kernels)."""
