"""What a training experiment runs (TrainConfig), the configurations it compares (Variant), and the presets."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import majority_kernels as mk

# The presets use whatever init the library defaults to, so they show what a user gets from mk.convert(model).
LIBRARY_DEFAULT_INIT: str = inspect.signature(mk.convert).parameters["init"].default

DENSE, MK, WIDE = "dense", "mk", "wide"
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class Variant:
    """One configuration: the dense baseline, an MK model with `expansion` copies of each weight, or the wide
    dense model with about `expansion` x the dense model's parameters (the over-parameterised reference)."""

    kind: str = DENSE
    expansion: Optional[int] = None
    init: Optional[str] = None

    @property
    def label(self) -> str:
        if self.kind == MK:
            return f"MK e={self.expansion} {self.init}"
        return f"wide ×{self.expansion}" if self.kind == WIDE else DENSE


def describe(settings: dict) -> str:
    """One line saying what an experiment compares, from its settings (a TrainConfig as a dict, as the report
    stores it)."""
    expansions = ", ".join(str(e) for e in settings["expansions"])
    wide = " and wide dense models" if settings["wide"] else ""
    regime = [f"{settings['label_noise']:.0%} label noise"] if settings["label_noise"] else []
    if settings["train_samples"]:
        regime.append(f"{settings['train_samples']} training samples")
    if settings["patience"]:
        regime.append(f"early stopping (patience {settings['patience']})")
    return (
        f"{settings['model']} on {settings['dataset']}{''.join(f', {item}' for item in regime)}: dense vs MK "
        f"(e in {{{expansions}}}, init {' and '.join(settings['inits'])}){wide}, {settings['optimizer']}, "
        f"{settings['seeds']} seeds, {settings['epochs']} epochs"
    )


@dataclass(frozen=True)
class TrainConfig:
    """An experiment: the dense baseline, every (expansion, init) MK variant and a wide dense model per expansion.
    Each variant picks its learning rate and weight decay from the grid by the validation metric (mean over seeds
    0 .. tune_seeds-1), then trains from seeds 0 .. seeds-1 with them; the test data is evaluated once per run."""

    name: str  # names the results folder
    dataset: str  # a built-in dataset or "module:function" (see data.task_factory)
    model: str  # a built-in model (see models.MODELS)
    expansions: tuple[int, ...]
    inits: tuple[str, ...]
    seeds: int
    epochs: int
    batch_size: int
    lrs: tuple[float, ...]  # the grid of peak learning rates (cosine-annealed to 0 over the epochs)
    weight_decays: tuple[float, ...] = (0.0,)  # the grid of (decoupled, for AdamW) weight decays
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9)
    wide: bool = True  # train the wide dense reference for every expansion
    tune_seeds: int = 1
    validation_fraction: float = 0.2  # of the training data, held out to pick hyperparameters and epochs
    label_noise: float = 0.0  # the share of training labels replaced by a wrong class
    patience: Optional[int] = None  # stop after this many epochs without a better validation metric, and keep
    # the best epoch's weights; None: train every epoch and keep the last
    eval_batch_size: int = 512
    train_samples: Optional[int] = None  # None: the whole training set (validation included)
    test_samples: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # the majority-kernels backend (auto: the fastest one built for the device)
    output: Optional[Path] = None  # None: benchmarks/results/train/<name>-<device type>
    plots: bool = True
    progress: bool = True
    gpu: dict = field(default_factory=dict)  # settings replaced when it runs on a GPU (a larger run)

    def describe(self) -> str:
        return describe(dataclasses.asdict(self))

    def variants(self) -> list[Variant]:
        """Dense first, then the MK variants, then the wide references, each in order of expansion."""
        return (
            [Variant()]
            + [Variant(MK, e, init) for e in self.expansions for init in self.inits]
            + [Variant(WIDE, e) for e in self.expansions if self.wide]
        )

    def grid(self) -> list[tuple[float, float]]:
        """Every (learning rate, weight decay) pair a variant chooses from."""
        return [(lr, weight_decay) for lr in self.lrs for weight_decay in self.weight_decays]

    def for_device(self, device_type: str) -> TrainConfig:
        """The config with its GPU settings applied when device_type is "cuda"."""
        return dataclasses.replace(self, **self.gpu, gpu={}) if device_type == "cuda" else self


INITS = ("replicate", "independent")

_ADAMW_LRS = (1e-3, 3e-3, 1e-2)
_SGD_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)  # MK's copies each get a share of the gradient: it may need more
_DIGITS = dict(
    dataset="digits", batch_size=64, inits=(LIBRARY_DEFAULT_INIT,), seeds=5, lrs=_ADAMW_LRS, gpu={"seeds": 10}
)

PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(name="default", model="mlp", expansions=(4,), epochs=20, **_DIGITS),
    "mlp": TrainConfig(name="mlp", model="mlp", expansions=(2, 4, 8), epochs=30, **_DIGITS),
    "cnn": TrainConfig(name="cnn", model="cnn", expansions=(4,), epochs=20, **{**_DIGITS, "lrs": (3e-4, 1e-3, 3e-3)}),
    "few-samples": TrainConfig(
        name="few-samples", model="mlp", expansions=(2, 4, 8), epochs=60, train_samples=225, **_DIGITS
    ),
    # With label noise, small learning rates win (the large ones fit the wrong labels).
    "label-noise": TrainConfig(
        name="label-noise",
        model="mlp",
        expansions=(4,),
        epochs=40,
        label_noise=0.2,
        **{**_DIGITS, "lrs": (3e-5, 1e-4, 3e-4, 1e-3)},
    ),
    "long": TrainConfig(name="long", model="mlp", expansions=(4,), epochs=200, train_samples=450, **_DIGITS),
    "sgd": TrainConfig(
        name="sgd", model="mlp", expansions=(4,), epochs=30, optimizer="sgd", **{**_DIGITS, "lrs": _SGD_LRS}
    ),
    "breast-cancer": TrainConfig(
        name="breast-cancer",
        dataset="breast-cancer",
        model="mlp",
        expansions=(4,),
        epochs=40,
        batch_size=32,
        inits=(LIBRARY_DEFAULT_INIT,),
        seeds=5,
        lrs=_ADAMW_LRS,
        gpu={"seeds": 10},
    ),
    # A quarter of a megabyte of text would take too long on a CPU: its first 600 windows of 128 characters train
    # (a fifth of them validate), until the validation loss stops improving; a GPU takes all of it.
    "lm": TrainConfig(
        name="lm",
        dataset="python-docs",
        model="transformer",
        expansions=(4,),
        inits=(LIBRARY_DEFAULT_INIT,),
        seeds=5,
        epochs=40,
        batch_size=32,
        lrs=(3e-3, 1e-2, 3e-2),
        patience=3,
        train_samples=600,
        test_samples=300,
        gpu={"seeds": 10, "train_samples": None, "test_samples": None},
    ),
}
