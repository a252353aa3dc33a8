"""`majority-kernels train`: the paper-style evaluation. Trains a dense baseline, MK variants of a model and wide
dense references (about e x the parameters) over several seeds on real data, each variant with the learning rate
it picks on a validation split, and reports test accuracy (or loss), the share of the wide model's gain that MK
recovers, training time, and the deployed model's check.

    from majority_kernels import train
    report = train.run(train.PRESETS["cnn"])      # or a TrainConfig of your own; your data: task=custom_task(...)
    print(train.summary_table(report))
    train.write(report, Path("results/cnn"))       # results.json, results.md, PNG plots
"""

from .data import Task, custom_task, load_digits, load_python_docs, load_tabular
from .experiment import resolve_device, run
from .presets import PRESETS, TrainConfig, Variant
from .report import default_output, gain_table, summary_table, write

__all__ = [
    "Task",
    "custom_task",
    "load_digits",
    "load_python_docs",
    "load_tabular",
    "run",
    "resolve_device",
    "PRESETS",
    "TrainConfig",
    "Variant",
    "default_output",
    "gain_table",
    "summary_table",
    "write",
]
