"""One training run: train for the configured epochs (timing each), evaluate after each, and check the deployed model.

The deployed model is what SOP promises: the MK model collapsed to its mean kernels, loaded into a freshly built
dense model. The check compares it with the MK model in eval mode on the whole test set.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import majority_kernels as mk

from .data import Task
from .presets import TrainConfig, Variant

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
    """Mean test loss and accuracy of `model` in eval mode."""
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
    return {"mk_eval": mk_metrics.result(), "deployed": deployed_metrics.result(),
            "max_output_difference": max_difference}


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
    """Median seconds of one forward pass of `model` over the whole test set (after one untimed pass)."""
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


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                schedule: torch.optim.lr_scheduler.LRScheduler, device: torch.device) -> float:
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


def train_run(build_model: Callable[[Task], nn.Module], task: Task, config: TrainConfig, variant: Variant,
              seed: int, device: torch.device, progress: Optional[tqdm] = None) -> dict:
    """Trains `variant` of the model from seed `seed` and returns its record: per-epoch training loss, test
    metrics and time, and the deployed model's check, parameter count and inference time.

    The seed fixes the dense initialisation and the order of the training batches, so the dense baseline and
    every "replicate" variant of one seed start from the same weights and see the same batches."""
    torch.manual_seed(seed)
    model = build_model(task)
    if variant.expansion is not None:
        mk.convert(model, variant.expansion, init=variant.init)
    model.to(device)
    initial_spread = copy_spread(model)
    train_loader = DataLoader(task.train, batch_size=config.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
    test_loader = DataLoader(task.test, batch_size=config.eval_batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(train_loader))

    epochs = []
    for epoch in range(config.epochs):
        _synchronize(device)
        start = time.perf_counter()
        train_loss = train_epoch(model, train_loader, optimizer, schedule, device)
        _synchronize(device)
        seconds = time.perf_counter() - start
        test = evaluate(model, test_loader, device)
        epochs.append({"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test["loss"],
                       "test_accuracy": test["accuracy"], "time_s": seconds})
        if progress is not None:
            progress.set_postfix(variant=variant.label, seed=seed, epoch=epoch + 1, train_loss=f"{train_loss:.3f}",
                                 test_acc=f"{test['accuracy']:.4f}")

    deployed = build_model(task).to(device)
    deployed.load_state_dict(mk.collapse(copy.deepcopy(model)).state_dict())  # strict: the dense model's keys
    check = compare_deployed(model, deployed, test_loader, device)
    return {
        "variant": variant.label, "expansion": variant.expansion, "init": variant.init, "seed": seed,
        "epochs": epochs,
        "test_loss": check["mk_eval"]["loss"], "test_accuracy": check["mk_eval"]["accuracy"],
        "deployed_test_loss": check["deployed"]["loss"], "deployed_test_accuracy": check["deployed"]["accuracy"],
        "deployed_max_output_difference": check["max_output_difference"],
        "deployed_matches": check["deployed"]["accuracy"] == check["mk_eval"]["accuracy"],
        "copy_spread_initial": initial_spread, "copy_spread": copy_spread(model),
        "train_parameters": sum(p.numel() for p in model.parameters()),
        "deployed_parameters": sum(p.numel() for p in deployed.parameters()),
        # The fastest epoch: other load on the machine only ever adds time, and the first epoch's warm-up too.
        "epoch_time_s": min(epoch["time_s"] for epoch in epochs),
        "deployed_inference_time_s": inference_time(deployed, test_loader, device),
    }
