"""The linear layer's path policy for every backend with paths of its own (cuda, triton): one vocabulary, one
reading of the environment, one way to force a path in a block. The choice by batch size is each backend's,
against the GPU's thresholds (majority_kernels.tuning; docs/backends.md).

    forward   "fused": W_eff built inside the GEMM, never in memory; "combine": W_eff, then torch's GEMM
    dW        "fused": the copies' gradients written by the dW GEMM's epilogue; "scatter": torch's GEMM, then scatter

MK_LINEAR_PATH and MK_WGRAD_PATH take those names or "auto" (unset: "auto"), in any case; `force_paths` does the
same inside a block and wins over the environment. A backend without a path that is forced raises a ValueError
naming it, never runs another silently.
"""

import contextlib
from typing import Iterator, NamedTuple, Optional

from . import _environment

AUTO = "auto"
FORWARD_PATHS = ("fused", "combine")
WGRAD_PATHS = ("fused", "scatter")
FORWARD_VARIABLE, WGRAD_VARIABLE = "MK_LINEAR_PATH", "MK_WGRAD_PATH"


class Forced(NamedTuple):
    """The paths forced for the layers running now (None: the backend chooses by batch size)."""

    forward: Optional[str]
    wgrad: Optional[str]


# force_paths blocks, innermost last: a plain list, which torch.compile guards on (a changed choice retraces).
_blocks: list[Forced] = []


def _checked(value: Optional[str], choices: tuple[str, ...], what: str) -> Optional[str]:
    if value in (None, "", AUTO):
        return None
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join((AUTO, *choices))}, got {value!r}")
    return value


@contextlib.contextmanager
def force_paths(forward: Optional[str] = None, wgrad: Optional[str] = None) -> Iterator[None]:
    """Run the enclosed mixed linear layers on the given paths (None or "auto": as the environment or the batch
    size decide)."""
    _blocks.append(Forced(_checked(forward, FORWARD_PATHS, "forward path"), _checked(wgrad, WGRAD_PATHS, "wgrad path")))
    try:
        yield
    finally:
        _blocks.pop()


def forced() -> Forced:
    """The innermost force_paths block's paths, else MK_LINEAR_PATH / MK_WGRAD_PATH's (read when a layer runs, or
    once when torch.compile traces it)."""
    block = _blocks[-1] if _blocks else Forced(None, None)
    return Forced(
        block.forward or _checked(_environment.read(FORWARD_VARIABLE), FORWARD_PATHS, FORWARD_VARIABLE),
        block.wgrad or _checked(_environment.read(WGRAD_VARIABLE), WGRAD_PATHS, WGRAD_VARIABLE),
    )
