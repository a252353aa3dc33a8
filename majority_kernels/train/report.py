"""The experiment's report: per-variant summary over seeds, the run's description, and the files (JSON with every
run's curves, a Markdown table that the terminal shows too, and the plots)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..bench.report import cpu_model
from .data import LANGUAGE_MODEL, Task
from .plots import write_plots
from .presets import TrainConfig, describe

RESULTS_DIR = Path("benchmarks/results/train")


def default_output(config: TrainConfig, device: torch.device) -> Path:
    """benchmarks/results/train/<name>-<device type> under the working directory, unless config.output says."""
    return config.output or RESULTS_DIR / f"{config.name}-{device.type}"


def run_info(config: TrainConfig, task: Task, device: torch.device, backend: str, wall_time_s: float) -> dict:
    """What ran, where, with which versions and settings."""
    settings = {key: str(value) if isinstance(value, Path) else value
                for key, value in dataclasses.asdict(config).items()}
    return {
        "name": config.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": task.name,
        "task_kind": task.kind,
        "task_description": task.description,
        "train_samples": len(task.train),
        "test_samples": len(task.test),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "backend": backend,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "majority_kernels": __version__,
        "config": settings,
        "wall_time_s": wall_time_s,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict], info: dict) -> dict:
    """The report: info, one summary row per variant (dense first), and the runs themselves.

    Differences to dense are paired by seed (same dense initialisation and batch order), which removes the spread
    that seeds cause in both; times are each run's fastest epoch, averaged over seeds."""
    by_variant: dict[str, list[dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    dense = {run["seed"]: run for run in by_variant["dense"]}
    dense_epoch_time = statistics.fmean(run["epoch_time_s"] for run in dense.values())
    dense_inference_time = statistics.fmean(run["deployed_inference_time_s"] for run in dense.values())
    rows = []
    for label, group in by_variant.items():
        row = {"variant": label, "expansion": group[0]["expansion"], "init": group[0]["init"], "seeds": len(group)}
        for key in ("test_accuracy", "test_loss"):
            row[key], row[f"{key}_std"] = _mean_std([run[key] for run in group])
            row[f"{key}_delta"], row[f"{key}_delta_std"] = _mean_std(
                [run[key] - dense[run["seed"]][key] for run in group])
        if info["task_kind"] == LANGUAGE_MODEL:
            perplexities = [math.exp(run["test_loss"]) for run in group]
            row["test_perplexity"], row["test_perplexity_std"] = _mean_std(perplexities)
        if row["expansion"] is not None:
            row["copy_spread_initial"] = statistics.fmean(run["copy_spread_initial"] for run in group)
            row["copy_spread"] = statistics.fmean(run["copy_spread"] for run in group)
        row["epoch_time_s"] = statistics.fmean(run["epoch_time_s"] for run in group)
        row["epoch_time_ratio"] = row["epoch_time_s"] / dense_epoch_time
        row["train_parameters"] = group[0]["train_parameters"]
        row["deployed_parameters"] = group[0]["deployed_parameters"]
        row["deployed_inference_time_s"] = statistics.fmean(run["deployed_inference_time_s"] for run in group)
        row["deployed_inference_ratio"] = row["deployed_inference_time_s"] / dense_inference_time
        row["deployed_matches"] = all(run["deployed_matches"] for run in group)
        row["deployed_max_output_difference"] = max(run["deployed_max_output_difference"] for run in group)
        rows.append(row)
    return {"meta": info, "summary": rows, "runs": runs}


Column = tuple[str, Callable[[dict], str]]


def _plus_minus(key: str, scale: float = 1.0, digits: int = 2, signed: bool = False) -> Callable[[dict], str]:
    sign = "+" if signed else ""
    return lambda row: f"{row[key] * scale:{sign}.{digits}f} ± {row[f'{key}_std'] * scale:.{digits}f}"


def _delta(key: str, scale: float = 1.0, digits: int = 2) -> Callable[[dict], str]:
    """The paired difference to dense; a dash on the dense row itself."""
    cell = _plus_minus(f"{key}_delta", scale, digits, signed=True)
    return lambda row: "–" if row["expansion"] is None else cell(row)


def _check(row: dict) -> str:
    verdict = "yes" if row["deployed_matches"] else "NO"
    return f"{verdict} (max diff {row['deployed_max_output_difference']:.1e})"


COMMON_COLUMNS: list[Column] = [
    ("copy spread start → end", lambda row: "–" if row["expansion"] is None
     else f"{row['copy_spread_initial']:.3f} → {row['copy_spread']:.3f}"),
    ("s / epoch", lambda row: f"{row['epoch_time_s']:.3f}"),
    ("× dense", lambda row: f"{row['epoch_time_ratio']:.2f}"),
    ("params train → deployed", lambda row: f"{row['train_parameters']:,} → {row['deployed_parameters']:,}"),
    ("inference ms (× dense)",
     lambda row: f"{row['deployed_inference_time_s'] * 1e3:.2f} ({row['deployed_inference_ratio']:.2f})"),
    ("deployed = MK eval", _check),
]

CLASSIFICATION_COLUMNS: list[Column] = [
    ("variant", lambda row: row["variant"]),
    ("test accuracy %", _plus_minus("test_accuracy", 100)),
    ("Δ accuracy vs dense (pp)", _delta("test_accuracy", 100)),
    ("test loss", _plus_minus("test_loss", digits=4)),
    *COMMON_COLUMNS,
]

LANGUAGE_MODEL_COLUMNS: list[Column] = [
    ("variant", lambda row: row["variant"]),
    ("test loss (nats/char)", _plus_minus("test_loss", digits=4)),
    ("Δ loss vs dense", _delta("test_loss", digits=4)),
    ("test perplexity", _plus_minus("test_perplexity", digits=3)),
    ("next-char accuracy %", _plus_minus("test_accuracy", 100)),
    *COMMON_COLUMNS,
]

NOTES = """\
Mean ± sample standard deviation over seeds. Δ vs dense: the difference to the dense run of the same seed (same
initial weights for "replicate", same batch order), mean ± std over seeds. s / epoch: each run's fastest training
epoch (evaluation excluded; the least disturbed by other load), averaged over seeds. Inference: the deployed model
over the whole test set, median of 5 passes. Deployed: the MK model collapsed to its mean kernels and loaded
into a freshly built dense model; "deployed = MK eval" says whether its test accuracy equals the MK model's in eval
mode, with the largest difference of their outputs over the test set. Copy spread: the copies' RMS distance from
their mean relative to the mean's norm, over all MK layers (0: the copies are equal, every mixture is the mean)."""


def summary_table(report: dict) -> str:
    """The summary as a Markdown table (also what the terminal shows)."""
    language_model = report["meta"]["task_kind"] == LANGUAGE_MODEL
    columns = LANGUAGE_MODEL_COLUMNS if language_model else CLASSIFICATION_COLUMNS
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in report["summary"]]
    return "\n".join(lines)


def to_markdown(report: dict, plots: list[Path] = ()) -> str:
    meta = report["meta"]
    config = meta["config"]
    lines = [
        f"# majority-kernels train: {meta['name']}", "",
        describe(config), "",
        f"- task: {meta['task_description']}; used: {meta['train_samples']} train / {meta['test_samples']} test items",
        f"- model: {config['model']}; epochs {config['epochs']}, batch {config['batch_size']}, AdamW lr "
        f"{config['lr']} (cosine to 0), weight decay {config['weight_decay']}; seeds 0..{config['seeds'] - 1}",
        f"- device: {meta['device']} ({meta['device_name']}, torch threads: {meta['torch_threads']}), backend "
        f"{meta['backend']}, torch {meta['torch']}, Python {meta['python']}, majority-kernels "
        f"{meta['majority_kernels']}",
        f"- wall time: {meta['wall_time_s']:.0f} s, {meta['date']}", "",
        summary_table(report), "",
        NOTES,
    ]
    lines += [line for path in plots for line in ("", f"![{path.stem}]({path.name})")]
    return "\n".join(lines) + "\n"


def write(report: dict, folder: Path, plots: bool = True) -> list[Path]:
    """Writes results.json, the plots (unless plots is False) and results.md, which shows them, into `folder`;
    returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "results.json"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    plot_paths = write_plots(report, folder) if plots else []
    markdown_path = folder / "results.md"
    markdown_path.write_text(to_markdown(report, plot_paths))
    return [json_path, markdown_path, *plot_paths]
