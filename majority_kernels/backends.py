"""Backend choice: which implementation of combine / scatter / mixing_weights runs for a tensor's device.

The choice comes from `mk.use_backend(name)` when one is active, else from the environment variable MK_BACKEND,
else "auto". "auto" takes the fastest backend built for the device; naming a backend that cannot run here raises
a RuntimeError that says why: there is never a silent fallback to a slower path.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from . import _environment, cuda_ops, ops, reference

AUTO = "auto"


@dataclass(frozen=True)
class Backend:
    """One implementation of the mixing ops. `unavailable(device)` returns None if it can run there, else why not."""

    name: str
    combine: Callable[[Tensor, Tensor, int, Optional[torch.dtype]], Tensor]
    scatter: Callable[[Tensor, Tensor, int, int, Optional[torch.dtype]], Tensor]
    scatter_add_: Callable[[Tensor, Tensor, Tensor, int], None]
    mixing_weights: Callable[[Tensor, int, int, int], Tensor]
    # (weight [e, rows, dim], indices, seed, offset, out_dtype) -> the looked-up rows of the mixed table.
    embedding_combine: Callable[[Tensor, Tensor, Tensor, int, Optional[torch.dtype]], Tensor]
    unavailable: Callable[[torch.device], Optional[str]]
    # (input, weight, bias, seed, offset, out_dtype) -> the mixed linear layer's output, for backends with their
    # own linear paths (fused GEMMs); None: combine, then F.linear.
    linear: Optional[Callable[[Tensor, Tensor, Optional[Tensor], Tensor, int, Optional[torch.dtype]], Tensor]] = None


def _reference_scatter_add_(grad_weight: Tensor, grad: Tensor, seed: Tensor, offset: int) -> None:
    grad_weight.add_(reference.scatter(grad, seed, offset, grad_weight.shape[0], grad_weight.dtype))


def _reference_embedding_combine(
    weight: Tensor, indices: Tensor, seed: Tensor, offset: int, out_dtype: Optional[torch.dtype]
) -> Tensor:
    return reference.embedding_combine(weight, indices, seed, offset, out_dtype)


def _reference_mixing_weights(seed: Tensor, offset: int, expansion: int, numel: int) -> Tensor:
    return reference.mixing_weights(expansion, numel, seed, offset, device=seed.device)


def _cpu_unavailable(device: torch.device) -> Optional[str]:
    if not ops.HAS_EXTENSION:
        return f"the C++ extension is unavailable: {ops.EXTENSION_ERROR}"
    if device.type != "cpu":
        return f"backend 'cpu' runs on CPU tensors only, not on {device}"
    return None


def _compiled_op(name: str) -> Callable:
    # Looked up at call time: the ops exist only when the extension is built.
    return lambda *args: getattr(torch.ops.majority_kernels, name)(*args)


def _compiled_backend(
    name: str, unavailable: Callable[[torch.device], Optional[str]], linear: Optional[Callable] = None
) -> Backend:
    """A backend made of the extension's ops, which dispatch on the device (CPU or CUDA kernels)."""
    return Backend(
        name,
        _compiled_op("combine"),
        _compiled_op("scatter"),
        _compiled_op("scatter_add_"),
        _compiled_op("mixing_weights"),
        _compiled_op("embedding_combine"),
        unavailable,
        linear,
    )


def _load(module: str) -> tuple[Optional[object], Optional[str]]:
    """Imports majority_kernels.<module>: (the module, None), or (None, why it cannot be imported). Any error
    counts: a Triton that is installed but too old or broken must cost its backend only, not the package."""
    try:
        return importlib.import_module(f"{__package__}.{module}"), None
    except Exception as error:
        return None, f"{module} cannot be imported ({type(error).__name__}: {error})"


def _cuda_unavailable(device: torch.device) -> Optional[str]:
    if not ops.HAS_EXTENSION:
        return f"the C++ extension is unavailable: {ops.EXTENSION_ERROR}"
    if not ops.HAS_CUDA_KERNELS:
        return (
            "this install has no CUDA kernels (built without a CUDA build of torch and a CUDA toolkit, or "
            "with MK_SKIP_CUDA=1)"
        )
    if device.type != "cuda":
        return f"backend 'cuda' runs on CUDA tensors only, not on {device}"
    return None


_triton_ops, TRITON_ERROR = _load("triton_ops")


def _triton_backend() -> Backend:
    if _triton_ops is None:

        def missing(*args):
            raise RuntimeError(f"majority-kernels backend 'triton' cannot run here: {TRITON_ERROR}")

        return Backend("triton", missing, missing, missing, missing, missing, lambda device: TRITON_ERROR)
    return Backend(
        "triton",
        _triton_ops.combine,
        _triton_ops.scatter,
        _triton_ops.scatter_add_,
        _triton_ops.mixing_weights,
        _triton_ops.embedding_combine,
        _triton_ops.unavailable,
        _triton_ops.linear,
    )


BACKENDS: dict[str, Backend] = {
    "reference": Backend(
        "reference",
        reference.combine,
        reference.scatter,
        _reference_scatter_add_,
        _reference_mixing_weights,
        _reference_embedding_combine,
        lambda device: None,
    ),
    "cpu": _compiled_backend("cpu", _cpu_unavailable),
    "cuda": _compiled_backend("cuda", _cuda_unavailable, cuda_ops.linear),
    "triton": _triton_backend(),
}

# What "auto" tries, fastest first, per device type; the first backend that can run wins. Triton runs on CPU
# tensors only under its interpreter (TRITON_INTERPRET=1, for tests), so "auto" never picks it there. Meta tensors
# (shapes without data) take the reference ops, plain torch ops that any device has.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("cpu",), "cuda": ("cuda", "triton"), "meta": ("reference",)}

# Per thread, the names of the enclosing use_backend blocks, innermost last: a block's choice holds in its own
# thread only, and no other thread's blocks can change it. (A threading.local, which torch.compile traces and
# guards on; it cannot trace a ContextVar.)
_blocks = threading.local()
_warned: set[str] = set()


def _check_name(name: object, what: str) -> str:
    """The backend name as MK_BACKEND and use_backend both take it: any case, surrounding spaces ignored."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a backend name (str), got {type(name).__name__} {name!r}")
    normal = name.strip().lower()
    if normal != AUTO and normal not in BACKENDS:
        raise ValueError(f"unknown majority-kernels backend {name!r} in {what}: choose one of {[AUTO, *BACKENDS]}")
    return normal


def requested() -> str:
    """The backend name in force: this thread's innermost `use_backend`, else MK_BACKEND, else "auto"."""
    active = getattr(_blocks, "names", None)
    if active:
        return active[-1]
    return _check_name(_environment.read("MK_BACKEND") or AUTO, "MK_BACKEND")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code, in this thread, with backend `name` ("auto", "reference", "cpu", ...; any case)."""
    name = _check_name(name, "use_backend")
    if not hasattr(_blocks, "names"):
        _blocks.names = []
    active = _blocks.names
    active.append(name)
    try:
        yield
    finally:
        active.pop()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def backend_for(device: torch.device) -> Backend:
    """The backend that runs tensors on `device` under the current choice."""
    name = requested()
    if name != AUTO:
        backend = BACKENDS[name]
        reason = backend.unavailable(device)
        if reason is not None:
            raise RuntimeError(f"majority-kernels backend {name!r} cannot run here: {reason}")
        return backend
    for candidate in AUTO_ORDER.get(device.type, ()):
        if BACKENDS[candidate].unavailable(device) is None:
            return BACKENDS[candidate]
    reasons = "; ".join(f"{c}: {BACKENDS[c].unavailable(device)}" for c in AUTO_ORDER.get(device.type, ()))
    _warn_once(
        device.type,
        f"majority-kernels: no fused backend for {device.type} tensors in this install"
        f"{' (' + reasons + ')' if reasons else ''}; using the slow 'reference' backend",
    )
    return BACKENDS["reference"]


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on `device` here."""
    device = torch.device(device)
    return [name for name, backend in BACKENDS.items() if backend.unavailable(device) is None]
