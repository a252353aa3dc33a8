"""The mean of an expanded weight's copies: what eval mode, `collapsed_weight` and the dense layer use.

Three properties, whatever the dtype: equal copies (init="replicate") give that weight back bit for bit (a plain
sum would round 3 w to a float that / 3 does not undo); finite copies give a finite mean (the evaluation order never
overflows, also for copies of opposite signs near the float limit); infinities and NaN come out as torch.mean would
give them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mean_of_copies(copies: Tensor) -> Tensor:
    """mean_k copies[k] over the leading dimension, in copies' dtype (differentiable).

    Computed in halves h_k = w_k / 2 around the pivot c = h_0 as 2 (c + sum_k (h_k - c) / e) + r, where r = w_0 - 2 h_0
    is the bit that halving a subnormal w_0 drops (else 0). Equal copies give 2 h_0 + r = w_0 exactly; no difference
    of halves overflows, and dividing each by e before the sum keeps every partial sum below the largest float. Where
    w_0 is not finite the pivot is 0 (and r is 0), so its own term carries the Inf / NaN into the sum as torch.mean
    does. The 16-bit floats are computed in float32.
    """
    work = copies if copies.dtype in (torch.float32, torch.float64) else copies.float()
    half = work[0] * 0.5
    pivot = torch.nan_to_num(half, nan=0.0, posinf=0.0, neginf=0.0)
    residue = torch.nan_to_num(work[0] - half * 2, nan=0.0)
    differences = torch.addcmul(-pivot, work, torch.tensor(0.5, dtype=work.dtype)).div_(work.shape[0])
    return ((pivot + differences.sum(0)) * 2 + residue).to(copies.dtype)
