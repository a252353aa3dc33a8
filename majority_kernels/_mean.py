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

    Computed in halves, h_k = w_k / 2, as w_0 + 2 sum_k (h_k - h_0) / e would overflow: 2 (h_0 + sum_k (h_k - h_0) / e)
    + r_0, where r_0 = w_0 - 2 h_0 is the bit that halving a subnormal w_0 drops (else 0). Equal copies give
    2 h_0 + r_0 = w_0 exactly; no difference of halves overflows, and dividing each by e before the sum keeps every
    partial sum below the largest float. The 16-bit floats are computed in float32. A NaN from the formula comes
    only from infinities (inf - inf): there the plain sum gives torch.mean's answer.
    """
    work = copies if copies.dtype in (torch.float32, torch.float64) else copies.float()
    expansion = work.shape[0]
    first = work[0] * 0.5
    residue = work[0] - first * 2
    differences = torch.addcmul(-first, work[1:], torch.tensor(0.5, dtype=work.dtype)).div_(expansion)
    mean = (first + differences.sum(0)) * 2 + residue
    mean = torch.where(mean.isnan(), work.sum(0) / expansion, mean)
    return mean.to(copies.dtype)
