"""Measurements: interleaved wall-clock timing, bytes saved for backward, CUDA peak memory, copy bandwidth."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import Tensor


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    reset: Callable[[], None] = lambda: None,
    on_round: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds of each call of every step, `repeats` samples each after `warmup` untimed rounds.

    Every round calls every step once, starting one further along each round: drifts of the machine (clock,
    other load, caches) hit all steps alike, so ratios between them compare like with like. `reset` runs
    before every call, untimed (zeroing gradients).
    """
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            reset()
            synchronize(device)
            begin = time.perf_counter()
            steps[name]()
            synchronize(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - begin)
        on_round()
    return samples


@dataclass(frozen=True)
class SavedBytes:
    """Bytes of the distinct storages autograd saved for the backward during one forward."""

    total: int
    parameters: int

    @property
    def excluding_parameters(self) -> int:
        """What training keeps alive beyond the model itself (parameters are resident anyway)."""
        return self.total - self.parameters


class SavedTensorCounter:
    """Context manager recording the storages of the tensors saved for backward (views of one storage count
    once, at the storage's full size: that is what stays alive)."""

    def __init__(self, parameters: Iterable[Tensor]) -> None:
        self._parameter_storages = {p.untyped_storage().data_ptr() for p in parameters}
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensorCounter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def result(self) -> SavedBytes:
        parameters = sum(size for ptr, size in self._storages.items() if ptr in self._parameter_storages)
        return SavedBytes(sum(self._storages.values()), parameters)


class PeakMemory:
    """Context manager: on CUDA, the peak allocated bytes inside it above what was allocated on entry;
    None elsewhere (torch keeps no allocator statistics for the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: Optional[int] = None
        self._base = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base


# Far beyond the last-level caches (CPU L3 up to a few hundred MiB, GPU L2 ~50-100 MiB).
COPY_BYTES = {"cuda": 1 << 30, "cpu": 256 << 20}


def copy_bandwidth(device: torch.device, repeats: int = 10) -> float:
    """Bytes per second moved by a large tensor copy_ (read + write), median of `repeats`: the bandwidth the
    memory-traffic floor is computed with."""
    nbytes = COPY_BYTES.get(device.type, COPY_BYTES["cpu"])
    source = torch.ones(nbytes // 4, device=device)
    target = torch.empty_like(source)
    samples = time_interleaved({"copy": lambda: target.copy_(source)}, device, warmup=2, repeats=repeats)
    return 2 * nbytes / statistics.median(samples["copy"])
