"""One training run: train for the configured epochs (timing each) on the training split, evaluate the validation
split after each, then evaluate the test data once and check the deployed model.

The deployed model is what SOP promises: the MK model collapsed to its mean kernels, loaded into a freshly built
dense model. The check compares it with the MK model in eval mode on the whole test set.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import majority_kernels as mk

from .data import LANGUAGE_MODEL, Task
from .models import Builder
from .presets import MK, TrainConfig, Variant

INFERENCE_REPEATS = 5


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Metrics:
    """Summed cross-entropy and correct predictions over every predicted element (an image, or a text position)."""

    def __init__(self) -> None:
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def add(self, logits: Tensor, targets: Tensor) -> None:
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        self.loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        self.correct += (logits.argmax(-1) == targets).sum().item()
        self.count += targets.numel()

    def result(self) -> dict:
        return {"loss": self.loss_sum / self.count, "accuracy": self.correct / self.count}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Mean loss and accuracy of `model` in eval mode."""
    model.eval()
    metrics = _Metrics()
    for inputs, targets in loader:
        metrics.add(model(inputs.to(device)), targets.to(device))
    return metrics.result()


@torch.no_grad()
def compare_deployed(model: nn.Module, deployed: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """The MK model in eval mode against its deployed dense model, on the same batches: both metrics and the
    largest difference of their outputs."""
    model.eval()
    deployed.eval()
    mk_metrics, deployed_metrics, max_difference = _Metrics(), _Metrics(), 0.0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        mk_logits, deployed_logits = model(inputs), deployed(inputs)
        mk_metrics.add(mk_logits, targets)
        deployed_metrics.add(deployed_logits, targets)
        max_difference = max(max_difference, (mk_logits - deployed_logits).abs().max().item())
    return {
        "mk_eval": mk_metrics.result(),
        "deployed": deployed_metrics.result(),
        "max_output_difference": max_difference,
    }


MK_LAYER_TYPES = (mk.MKLinear, mk.MKConv1d, mk.MKConv2d, mk.MKConv3d)


@torch.no_grad()
def copy_spread(model: nn.Module) -> Optional[float]:
    """How far the copies are apart: sqrt(sum over MK layers of mean_k |W_k - W|^2 / sum of |W|^2), W the mean
    kernel (None without MK layers). 0 while the copies are equal: then every mixture is W, and SOP is dense
    training."""
    weights = [module.weight for module in model.modules() if isinstance(module, MK_LAYER_TYPES)]
    if not weights:
        return None
    spread = sum((weight - weight.mean(0)).square().sum().item() / weight.shape[0] for weight in weights)
    return (spread / sum(weight.mean(0).square().sum().item() for weight in weights)) ** 0.5


@torch.no_grad()
def inference_time(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Median seconds of one forward pass of `model` over all of `loader`'s batches (after one untimed pass)."""
    model.eval()
    batches = [inputs.to(device) for inputs, _ in loader]
    times = []
    for _ in range(INFERENCE_REPEATS + 1):
        _synchronize(device)
        start = time.perf_counter()
        for inputs in batches:
            model(inputs)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def make_optimizer(config: TrainConfig, parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def score(metrics: dict, kind: str) -> tuple[float, float]:
    """What picks hyperparameters and epochs, higher is better: accuracy then loss for classification, the loss
    for a language model; a diverged run (NaN loss) scores lowest."""
    if math.isnan(metrics["loss"]):
        return (-math.inf, -math.inf)
    if kind == LANGUAGE_MODEL:
        return (-metrics["loss"], metrics["accuracy"])
    return (metrics["accuracy"], -metrics["loss"])


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> float:
    """One pass over the training data; returns the mean training loss over the epoch's batches."""
    model.train()
    losses = []
    for inputs, targets in loader:
        logits = model(inputs.to(device))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    return torch.stack(losses).mean().item()


@dataclass(frozen=True)
class Run:
    """What one training run is: the variant, its width multiplier (1 but for the wide model), the seed and the
    hyperparameters."""

    variant: Variant
    width: float
    seed: int
    lr: float
    weight_decay: float


def fit(
    build_model: Builder,
    task: Task,
    config: TrainConfig,
    run: Run,
    device: torch.device,
    progress: Optional[tqdm] = None,
) -> tuple[nn.Module, dict]:
    """Trains one run on task.train, evaluating task.validation after every epoch, and returns the model (the
    best epoch's weights under early stopping, else the last epoch's) with its record: per-epoch training loss,
    validation metrics and time, and the kept epoch. The test data is not touched.

    The seed fixes the dense initialisation and the order of the training batches, so the dense baseline and
    every "replicate" variant of one seed start from the same weights and see the same batches."""
    torch.manual_seed(run.seed)
    model = build_model(task, run.width)
    if run.variant.kind == MK:
        mk.convert(model, run.variant.expansion, init=run.variant.init)
    model.to(device)
    initial_spread = copy_spread(model)
    train_loader = DataLoader(
        task.train, batch_size=config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(run.seed)
    )
    validation_loader = DataLoader(task.validation, batch_size=config.eval_batch_size)
    optimizer = make_optimizer(config, model.parameters(), run.lr, run.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(train_loader))

    epochs: list[dict] = []
    best_epoch, best_state = 0, None
    for epoch in range(1, config.epochs + 1):
        _synchronize(device)
        start = time.perf_counter()
        train_loss = train_epoch(model, train_loader, optimizer, schedule, device)
        _synchronize(device)
        seconds = time.perf_counter() - start
        validation = evaluate(model, validation_loader, device)
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "validation_loss": validation["loss"],
                "validation_accuracy": validation["accuracy"],
                "time_s": seconds,
            }
        )
        if progress is not None:
            progress.set_postfix(
                variant=run.variant.label,
                seed=run.seed,
                lr=run.lr,
                epoch=epoch,
                train_loss=f"{train_loss:.3f}",
                val_acc=f"{validation['accuracy']:.4f}",
            )
        if config.patience is None:
            continue
        if best_epoch == 0 or score(validation, task.kind) > score(_validation(epochs[best_epoch - 1]), task.kind):
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience or math.isnan(train_loss):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    kept = best_epoch or len(epochs)
    record = {
        "variant": run.variant.label,
        "kind": run.variant.kind,
        "expansion": run.variant.expansion,
        "init": run.variant.init,
        "width": run.width,
        "seed": run.seed,
        "lr": run.lr,
        "weight_decay": run.weight_decay,
        "epochs": epochs,
        "kept_epoch": kept,
        **{f"validation_{key}": value for key, value in _validation(epochs[kept - 1]).items()},
        "copy_spread_initial": initial_spread,
        "copy_spread": copy_spread(model),
        "train_parameters": sum(p.numel() for p in model.parameters()),
        # The fastest epoch: other load on the machine only ever adds time, and the first epoch's warm-up too.
        "epoch_time_s": min(epoch["time_s"] for epoch in epochs),
        "train_time_s": sum(epoch["time_s"] for epoch in epochs),
    }
    return model, record


def _validation(epoch: dict) -> dict:
    return {"loss": epoch["validation_loss"], "accuracy": epoch["validation_accuracy"]}


def test(
    model: nn.Module, build_model: Builder, task: Task, config: TrainConfig, record: dict, device: torch.device
) -> dict:
    """The record of a trained run completed with its one evaluation on the test data: the test metrics, and the
    deployed model's check, parameter count and inference time. The deployed model is the run's model collapsed
    to its mean kernels and loaded into a freshly built dense model of the run's width."""
    test_loader = DataLoader(task.test, batch_size=config.eval_batch_size)
    deployed = build_model(task, record["width"]).to(device)
    deployed.load_state_dict(mk.collapse(copy.deepcopy(model)).state_dict())  # strict: the dense model's keys
    check = compare_deployed(model, deployed, test_loader, device)
    return {
        **record,
        "test_loss": check["mk_eval"]["loss"],
        "test_accuracy": check["mk_eval"]["accuracy"],
        "deployed_test_loss": check["deployed"]["loss"],
        "deployed_test_accuracy": check["deployed"]["accuracy"],
        "deployed_max_output_difference": check["max_output_difference"],
        "deployed_matches": check["deployed"]["accuracy"] == check["mk_eval"]["accuracy"],
        "deployed_parameters": sum(p.numel() for p in deployed.parameters()),
        # Timed on the validation data, so that the test data is read once.
        "deployed_inference_time_s": inference_time(
            deployed, DataLoader(task.validation, batch_size=config.eval_batch_size), device
        ),
    }
