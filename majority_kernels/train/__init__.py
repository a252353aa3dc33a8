"""`majority-kernels train`: the paper-style evaluation."""
