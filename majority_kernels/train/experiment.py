"""An experiment: every variant of a TrainConfig picks its hyperparameters on the validation split, then trains over
the seeds; the runs are summarised into one report."""

from __future__ import annotations

import statistics
import time
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..backends import backend_for, use_backend
from . import data, models
from .loop import Run, fit, score, test
from .presets import WIDE, TrainConfig, Variant
from .report import run_info, summarise


def resolve_device(name: str) -> torch.device:
    """auto: cuda when torch sees a GPU, else cpu. Asking for cuda without one raises a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"cuda requested but torch sees no CUDA device (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'no'})"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def load_task(config: TrainConfig) -> data.Task:
    """The Task that config.dataset names."""
    task = data.task_factory(config.dataset)()
    if not isinstance(task, data.Task):
        raise TypeError(
            f"{config.dataset} returned {type(task).__name__}, not a Task (see majority_kernels.train.custom_task)"
        )
    return task


def prepare_task(config: TrainConfig, task: data.Task) -> data.Task:
    """The task as the experiment uses it: limited to config.train_samples / test_samples, with config.label_noise
    in its training labels, and a validation split carved out of its training data (unless it has one)."""
    task = data.limit(task, config.train_samples, config.test_samples)
    task = data.with_label_noise(task, config.label_noise)
    return task if task.validation is not None else data.with_validation(task, config.validation_fraction)


def _mean_score(records: list[dict], kind: str) -> tuple[float, ...]:
    scores = [score({"loss": r["validation_loss"], "accuracy": r["validation_accuracy"]}, kind) for r in records]
    return tuple(statistics.fmean(column) for column in zip(*scores))


def run(config: TrainConfig, task: Optional[data.Task] = None, build_model: Optional[models.Builder] = None) -> dict:
    """Runs the experiment and returns the report (see report.summarise). First each variant trains every
    (learning rate, weight decay) of the grid from seeds 0 .. tune_seeds-1 and keeps the pair with the best mean
    validation score; those runs of the kept pair are its first final runs (the same seeds would repeat them).
    Then the other seeds, seeds in the outer loop (so slow drifts of the machine's load spread over all variants).
    Every final run evaluates the test data once, at its end.

    task: your own data (data.custom_task), instead of config.dataset. build_model: your own model, a function of
    the task and a width multiplier (1: the dense model; the wide references need the model's hidden widths to
    scale with it) returning a dense nn.Module whose nn.Linear / nn.ConvNd layers get expanded.
    """
    device = resolve_device(config.device)
    config = config.for_device(device.type)
    task = prepare_task(config, load_task(config) if task is None else task)
    build_model = build_model or models.model_builder(config.model, task)
    variants = config.variants()
    widths = {
        variant: models.wide_width(build_model, task, variant.expansion) if variant.kind == WIDE else 1.0
        for variant in variants
    }
    grid, tune_seeds = config.grid(), min(config.tune_seeds, config.seeds)
    runs, tuning = [], []
    start = time.perf_counter()
    with use_backend(config.backend):
        backend = backend_for(device).name
        total = len(variants) * (len(grid) * tune_seeds + config.seeds - tune_seeds)
        with tqdm(total=total, desc=config.name, unit="run", disable=not config.progress) as progress:

            def train(variant: Variant, seed: int, lr: float, weight_decay: float):
                result = fit(
                    build_model, task, config, Run(variant, widths[variant], seed, lr, weight_decay), device, progress
                )
                progress.update()
                return result

            chosen = {}
            for variant in variants:
                trained = {pair: [train(variant, seed, *pair) for seed in range(tune_seeds)] for pair in grid}
                scores = {
                    pair: _mean_score([record for _, record in results], task.kind) for pair, results in trained.items()
                }
                chosen[variant] = max(grid, key=lambda pair: scores[pair])  # the first of equal scores
                tuning += [
                    {
                        "variant": variant.label,
                        "lr": lr,
                        "weight_decay": weight_decay,
                        "validation_score": list(scores[(lr, weight_decay)]),
                        "chosen": (lr, weight_decay) == chosen[variant],
                    }
                    for lr, weight_decay in grid
                ]
                runs += [
                    test(model, build_model, task, config, record, device) for model, record in trained[chosen[variant]]
                ]
            for seed in range(tune_seeds, config.seeds):
                for variant in variants:
                    model, record = train(variant, seed, *chosen[variant])
                    runs.append(test(model, build_model, task, config, record, device))
    info = run_info(config, task, device, backend, wall_time_s=time.perf_counter() - start)
    return summarise(runs, tuning, info)
