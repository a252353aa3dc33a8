"""An experiment: every variant of a TrainConfig over its seeds, summarised into one report."""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..backends import backend_for, use_backend
from . import data, models
from .loop import train_run
from .presets import TrainConfig
from .report import run_info, summarise


def resolve_device(name: str) -> torch.device:
    """auto: cuda when torch sees a GPU, else cpu. Asking for cuda without one raises a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"cuda requested but torch sees no CUDA device (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'no'})")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def load_task(config: TrainConfig) -> data.Task:
    """The Task that config.dataset names."""
    task = data.task_factory(config.dataset)()
    if not isinstance(task, data.Task):
        raise TypeError(f"{config.dataset} returned {type(task).__name__}, not a Task (see "
                        f"majority_kernels.train.custom_task)")
    return task


def run(config: TrainConfig, task: Optional[data.Task] = None,
        build_model: Optional[Callable[[data.Task], nn.Module]] = None) -> dict:
    """Trains the dense baseline and every MK variant of `config` from each seed, seeds in the outer loop (so that
    slow drifts of the machine's load spread over all variants), and returns the report (see report.summarise).

    task: your own data (data.custom_task), instead of config.dataset. build_model: your own model, a function of
    the task returning a dense nn.Module (its nn.Linear / nn.ConvNd layers get expanded), instead of config.model.
    """
    task = data.limit(load_task(config) if task is None else task, config.train_samples, config.test_samples)
    build_model = build_model or models.model_builder(config.model, task)
    device = resolve_device(config.device)
    runs = []
    start = time.perf_counter()
    with use_backend(config.backend):
        backend = backend_for(device).name
        jobs = [(seed, variant) for seed in range(config.seeds) for variant in config.variants()]
        with tqdm(jobs, desc=config.name, unit="run", disable=not config.progress) as progress:
            for seed, variant in progress:
                runs.append(train_run(build_model, task, config, variant, seed, device, progress))
    info = run_info(config, task, device, backend, wall_time_s=time.perf_counter() - start)
    return summarise(runs, info)
