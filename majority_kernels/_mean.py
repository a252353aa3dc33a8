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

    Computed as w_0 + sum_k (w_k - w_0) / e, which is w_0 exactly for equal copies, in float32 for the 16-bit
    floats. Where |w_0| >= 1 every copy is halved first (exact for such w_0; a power of two), so no difference
    w_k - w_0 overflows; elsewhere |w_k - w_0| <= max + 1 rounds to a finite value. Each difference is divided by e
    before the sum, so the partial sums stay below the largest float. A NaN from that formula comes only from
    infinities (inf - inf): there the plain sum gives torch.mean's answer.
    """
    work = copies if copies.dtype in (torch.float32, torch.float64) else copies.float()
    expansion = work.shape[0]
    scale = torch.where(work[0].abs() >= 1, 0.5, 1.0).to(work.dtype)
    first = work[0] * scale
    differences = torch.addcmul(-first, work[1:], scale) / expansion  # (w_k * scale - w_0 * scale) / e
    mean = (first + differences.sum(0)) / scale
    mean = torch.where(mean.isnan(), work.sum(0) / expansion, mean)
    return mean.to(copies.dtype)
