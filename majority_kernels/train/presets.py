"""What a training experiment runs (TrainConfig), the configurations it compares (Variant), and the presets."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import majority_kernels as mk

# The default run uses whatever init the library defaults to, so it shows what a user gets from mk.convert(model).
LIBRARY_DEFAULT_INIT: str = inspect.signature(mk.convert).parameters["init"].default


@dataclass(frozen=True)
class Variant:
    """One configuration: the dense baseline (expansion None) or an MK model with `expansion` copies."""

    expansion: Optional[int] = None
    init: Optional[str] = None

    @property
    def label(self) -> str:
        return "dense" if self.expansion is None else f"e={self.expansion} {self.init}"


def describe(settings: dict) -> str:
    """One line saying what an experiment compares, from its settings (a TrainConfig as a dict, as the report
    stores it)."""
    expansions = ", ".join(str(e) for e in settings["expansions"])
    return (f"{settings['model']} on {settings['dataset']}: dense vs e in {{{expansions}}} x init "
            f"{' and '.join(settings['inits'])}, {settings['seeds']} seed(s), {settings['epochs']} epochs")


@dataclass(frozen=True)
class TrainConfig:
    """An experiment: the dense baseline and every (expansion, init) MK variant, each trained from seeds
    0 .. seeds-1 with the same hyperparameters."""

    name: str  # names the results folder
    dataset: str  # a built-in dataset or "module:function" (see data.task_factory)
    model: str  # a built-in model (see models.MODELS)
    expansions: tuple[int, ...]
    inits: tuple[str, ...]
    seeds: int
    epochs: int
    batch_size: int
    lr: float  # AdamW's peak learning rate, annealed to 0 with a cosine over the run
    weight_decay: float
    eval_batch_size: int = 512
    train_samples: Optional[int] = None  # None: the whole training set
    test_samples: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # the majority-kernels backend (auto: the fastest one built for the device)
    output: Optional[Path] = None  # None: benchmarks/results/train/<name>-<device type>
    plots: bool = True
    progress: bool = True

    def describe(self) -> str:
        return describe(dataclasses.asdict(self))

    def variants(self) -> list[Variant]:
        """The dense baseline first, then every expansion with every init."""
        return [Variant()] + [Variant(e, init) for e in self.expansions for init in self.inits]


INITS = ("replicate", "independent")

_DIGITS = dict(dataset="digits", batch_size=64, lr=2e-3, weight_decay=1e-2)

PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(name="default", model="cnn", expansions=(4,), inits=(LIBRARY_DEFAULT_INIT,), seeds=3,
                           epochs=20, **_DIGITS),
    "mlp": TrainConfig(name="mlp", model="mlp", expansions=(2, 4, 8), inits=INITS, seeds=5, epochs=30, **_DIGITS),
    "cnn": TrainConfig(name="cnn", model="cnn", expansions=(2, 4, 8), inits=INITS, seeds=5, epochs=30, **_DIGITS),
    "lm": TrainConfig(name="lm", dataset="python-docs", model="transformer", expansions=(4,), inits=INITS, seeds=3,
                      epochs=6, batch_size=32, lr=2e-3, weight_decay=1e-2),
}
