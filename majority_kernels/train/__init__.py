"""`majority-kernels train`: the paper-style evaluation. Trains a dense baseline and MK variants of a model over
several seeds on real data and reports test accuracy (or loss), training time, and the deployed model's check.

    from majority_kernels import train
    report = train.run(train.PRESETS["cnn"])      # or a TrainConfig of your own; your data: task=custom_task(...)
    print(train.summary_table(report))
    train.write(report, Path("results/cnn"))       # results.json, results.md, PNG plots
"""

from .data import Task, custom_task, load_digits, load_python_docs
from .experiment import resolve_device, run
from .presets import PRESETS, TrainConfig, Variant
from .report import default_output, summary_table, write

__all__ = [
    "Task", "custom_task", "load_digits", "load_python_docs", "run", "resolve_device", "PRESETS", "TrainConfig",
    "Variant", "default_output", "summary_table", "write",
]
