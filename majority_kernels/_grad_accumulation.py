"""Gradient accumulation into the expanded weights' `.grad` in place, without an e x |W| temporary.

Autograd would have the backward return every copy's gradient as a new [e, ...] tensor and then add it to an
existing `.grad`: one temporary the size of the parameter per backward. When a `.backward()` call is about to add
into the expanded weight's existing `.grad`, the backward instead scatters into `.grad` directly and returns a
zero gradient that is a broadcast view of one scalar (no memory). Autograd's accumulation then adds that zero, so
everything hooked to the accumulation (DDP's all-reduce hooks, post-accumulate-grad hooks) still runs and sees the
accumulated `.grad`. The one visible difference: a hook registered with `weight.register_hook` sees that zero, not
this backward's gradient.

Threads. Autograd makes its own additions into `.grad` under a mutex per parameter, which this in-place add cannot
take. So the in-place add is made only while no backward of another thread may write the same `.grad`: every
backward that reaches an expanded weight through these ops registers with it until that backward ends, and adds in
place only if every registered backward runs on the current thread (one thread runs one node at a time; nested
backwards run inside the outer one; a CUDA weight's nodes all run on that device's autograd thread). Otherwise it
returns its gradient, and autograd adds it under its mutex. The add is made under a lock per weight that
registration takes too, so a backward that registers while one is adding waits for it. A backward that raises skips
its end-of-backward callbacks and stays registered: other threads then return their gradients for that weight
(correct, without the saving). A backward of another thread that reaches the weight only through plain torch ops
does not register.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Iterator, Optional

import torch
import torch.utils.weak
from torch import Tensor


def remember_weight(ctx, weight: Tensor) -> None:
    """Keeps on ctx what the backward needs of the expanded weight: the leaf (to find its .grad) and its version
    (to check it was not modified in place since the forward). Not through ctx.save_for_backward: the backward
    never reads the weight's values, and a saved tensor would count as kept for the backward (saved-tensor hooks,
    the benchmark's "saved" column) although no memory is kept. Eager leaves only; under torch.compile autograd
    sees only W_eff."""
    keep = weight.is_leaf and weight.requires_grad and not torch.compiler.is_compiling()
    ctx.expanded_weight = weight if keep else None
    ctx.expanded_weight_version = weight._version if keep else None


def remembered_weight(ctx) -> Optional[Tensor]:
    """The weight kept by remember_weight, after checking it is unchanged: modifying it in place between forward
    and backward raises autograd's usual error, as it does for a dense layer (whose backward reads the weight)."""
    weight = ctx.expanded_weight
    if weight is not None and weight._version != ctx.expanded_weight_version:
        raise RuntimeError(
            f"one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"[{weight.type()} {list(weight.shape)}] (an expanded majority-kernels weight) is at version "
            f"{weight._version}; expected version {ctx.expanded_weight_version} instead. Modify the weights only "
            f"after the backward (e.g. in optimizer.step())."
        )
    return weight


def _will_accumulate(leaf: Tensor) -> bool:
    """Whether the running backward adds into leaf.grad: a `.backward()` that reaches the leaf (torch.autograd.grad
    returns gradients instead, and the engine refuses the question for it)."""
    with torch.enable_grad():
        accumulator = leaf.view_as(leaf).grad_fn.next_functions[0][0]
    try:
        return bool(torch._C._will_engine_execute_node(accumulator))
    except RuntimeError:  # inside torch.autograd.grad
        return False


class _Writers:
    """The unfinished backwards (thread, graph task) that reached one weight, and the lock that orders them."""

    __slots__ = ("lock", "tasks")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: set[tuple[int, int]] = set()

    def finished(self, task: tuple[int, int]) -> None:
        with self.lock:
            self.tasks.discard(task)


_writers: torch.utils.weak.WeakIdKeyDictionary = torch.utils.weak.WeakIdKeyDictionary()
_writers_lock = threading.Lock()


@contextlib.contextmanager
def _sole_writer(weight: Tensor) -> Iterator[bool]:
    """Registers the running backward with `weight` until it ends and holds the weight's lock for the block; yields
    whether every registered backward runs on this thread (then nothing else writes weight.grad meanwhile)."""
    with _writers_lock:
        writers = _writers.get(weight)
        if writers is None:
            writers = _writers[weight] = _Writers()
    task = (threading.get_ident(), torch._C._current_graph_task_id())
    with writers.lock:
        if task not in writers.tasks:
            writers.tasks.add(task)
            torch.autograd.Variable._execution_engine.queue_callback(functools.partial(writers.finished, task))
        yield all(thread == task[0] for thread, _ in writers.tasks)


def _in_place_target(weight: Tensor, dtypes: Optional[tuple[torch.dtype, ...]]) -> Optional[Tensor]:
    """weight.grad if the backward's gradient can be added into it in place: a plain contiguous tensor of weight's
    shape, dtype and device (one of `dtypes`, where the op adds only those) that is not itself differentiable."""
    grad = weight.grad
    if (
        grad is None
        or grad.layout != torch.strided
        or not grad.is_contiguous()
        or grad.shape != weight.shape
        or grad.dtype != weight.dtype
        or grad.device != weight.device
        or grad.requires_grad
        or (dtypes is not None and grad.dtype not in dtypes)
    ):
        return None
    return grad


def _accumulated(weight: Tensor) -> Tensor:
    """What the backward returns once it has added into weight.grad: zeros of weight's shape, without memory."""
    return torch.zeros((), dtype=weight.dtype, device=weight.device).expand(weight.shape)


def copies_gradient(
    weight: Optional[Tensor],
    add_into: Callable[[Tensor], object],
    compute: Callable[[], Tensor],
    dtypes: Optional[tuple[torch.dtype, ...]] = None,
) -> Tensor:
    """The expanded weight's gradient for a backward to return. When a `.backward()` adds it into the `.grad` of
    the eager leaf `weight` (outside create_graph, whose .grad must not be mutated, and outside torch.compile's
    tracing), no other thread's backward is writing that `.grad`, and it has one the op can add into (`dtypes`:
    the dtypes add_into supports, None for all), add_into(weight.grad) adds it in place and the memoryless zero is
    returned; otherwise compute() makes it."""
    if (
        weight is None
        or torch.compiler.is_compiling()
        or torch.is_grad_enabled()
        or not weight.is_leaf
        or not _will_accumulate(weight)
    ):
        return compute()
    with _sole_writer(weight) as alone:
        target = _in_place_target(weight, dtypes) if alone else None
        if target is not None:
            add_into(target)
            return _accumulated(weight)
    return compute()
