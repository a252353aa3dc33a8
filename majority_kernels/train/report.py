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

from .._version import __version__
from ..bench.report import cpu_model
from .data import LANGUAGE_MODEL, Task
from .plots import write_plots
from .presets import DENSE, MK, WIDE, TrainConfig, describe

RESULTS_DIR = Path("benchmarks/results/train")


def default_output(config: TrainConfig, device: torch.device) -> Path:
    """benchmarks/results/train/<name>-<device type> under the working directory, unless config.output says."""
    return config.output or RESULTS_DIR / f"{config.name}-{device.type}"


def run_info(config: TrainConfig, task: Task, device: torch.device, backend: str, wall_time_s: float) -> dict:
    """What ran, where, with which versions and settings."""
    settings = {
        key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(config).items()
    }
    return {
        "name": config.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": task.name,
        "task_kind": task.kind,
        "task_description": task.description,
        "train_samples": len(task.train),
        "validation_samples": len(task.validation),
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


def headline(kind: str) -> tuple[str, float]:
    """The test metric a task is judged by and its sign (+1: higher is better): accuracy, or a language model's
    loss."""
    return ("test_loss", -1.0) if kind == LANGUAGE_MODEL else ("test_accuracy", 1.0)


def _t_quantile(count: int) -> float:
    """The two-sided 95% quantile of Student's t with count - 1 degrees of freedom."""
    from scipy.stats import t  # scipy comes with scikit-learn (the train extra)

    return float(t.ppf(0.975, count - 1))


def mean_interval(values: list[float]) -> dict:
    """Mean and 95% t interval of paired differences (None bounds for a single value)."""
    mean, std = _mean_std(values)
    half = _t_quantile(len(values)) * std / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": mean, "low": None if half is None else mean - half, "high": None if half is None else mean + half}


def share_interval(mk_gains: list[float], wide_gains: list[float]) -> dict:
    """The share of the wide model's gain that MK recovers, mean(mk) / mean(wide) over seeds (the gains paired by
    seed), with Fieller's 95% interval for a ratio of means. The interval is bounded only when the wide gain is
    significantly different from 0 at the same level; otherwise the share is undefined and its bounds are None."""
    count = len(mk_gains)
    mk_mean, wide_mean = statistics.fmean(mk_gains), statistics.fmean(wide_gains)
    share = mk_mean / wide_mean if abs(wide_mean) > 1e-12 else None  # no share of no gain
    if count < 2:
        return {"share": share, "low": None, "high": None, "defined": False}
    t2 = _t_quantile(count) ** 2 / count
    mk_var, wide_var = statistics.variance(mk_gains), statistics.variance(wide_gains)
    covariance = sum((x - mk_mean) * (y - wide_mean) for x, y in zip(mk_gains, wide_gains)) / (count - 1)
    # (mk - θ wide)^2 <= t^2 var(mk - θ wide) / n, a quadratic a θ^2 - 2 b θ + c <= 0 in θ.
    a, b, c = wide_mean**2 - t2 * wide_var, mk_mean * wide_mean - t2 * covariance, mk_mean**2 - t2 * mk_var
    if a <= 0 or wide_mean <= 0:
        return {"share": share, "low": None, "high": None, "defined": False}
    root = math.sqrt(max(b * b - a * c, 0.0))
    return {"share": share, "low": (b - root) / a, "high": (b + root) / a, "defined": True}


def _gains(report_runs: dict[str, dict[int, dict]], label: str, key: str, sign: float) -> list[float]:
    dense = report_runs["dense"]
    return [sign * (run[key] - dense[seed][key]) for seed, run in sorted(report_runs[label].items())]


def gain_rows(by_variant: dict[str, dict[int, dict]], key: str, sign: float) -> list[dict]:
    """For every MK variant with a wide reference of its expansion: MK's and the wide model's gain over dense on
    the metric `key` (times sign: positive is better), paired by seed, and the share of the wide gain that MK
    recovers."""
    wide = {
        runs[0]["expansion"]: label
        for label, runs in ((label, list(seeds.values())) for label, seeds in by_variant.items())
        if runs[0]["kind"] == WIDE
    }
    rows = []
    for label, seeds in by_variant.items():
        first = next(iter(seeds.values()))
        if first["kind"] != MK or first["expansion"] not in wide:
            continue
        mk_gains = _gains(by_variant, label, key, sign)
        wide_gains = _gains(by_variant, wide[first["expansion"]], key, sign)
        rows.append(
            {
                "variant": label,
                "wide": wide[first["expansion"]],
                "expansion": first["expansion"],
                "metric": key,
                "seeds": len(mk_gains),
                "mk_gain": mean_interval(mk_gains),
                "wide_gain": mean_interval(wide_gains),
                **share_interval(mk_gains, wide_gains),
            }
        )
    return rows


def summarise(runs: list[dict], tuning: list[dict], info: dict) -> dict:
    """The report: info, one summary row per variant (dense first), the share of the wide model's gain that MK
    recovers, the hyperparameter search, and the runs themselves.

    Differences to dense are paired by seed (same dense initialisation and batch order), which removes the spread
    that seeds cause in both; epoch times are each run's fastest epoch, averaged over seeds."""
    by_variant: dict[str, dict[int, dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], {})[run["seed"]] = run
    dense = by_variant["dense"]
    dense_means = {
        key: statistics.fmean(run[key] for run in dense.values())
        for key in ("epoch_time_s", "train_time_s", "deployed_inference_time_s")
    }
    rows = []
    for label, seeds in by_variant.items():
        group = list(seeds.values())
        first = group[0]
        row = {
            "variant": label,
            "kind": first["kind"],
            "expansion": first["expansion"],
            "init": first["init"],
            "width": first["width"],
            "seeds": len(group),
            "lr": first["lr"],
            "weight_decay": first["weight_decay"],
        }
        for key in ("test_accuracy", "test_loss", "validation_accuracy", "validation_loss"):
            row[key], row[f"{key}_std"] = _mean_std([run[key] for run in group])
        for key in ("test_accuracy", "test_loss"):
            row[f"{key}_delta"], row[f"{key}_delta_std"] = _mean_std(
                [run[key] - dense[run["seed"]][key] for run in group]
            )
        if info["task_kind"] == LANGUAGE_MODEL:
            row["test_perplexity"], row["test_perplexity_std"] = _mean_std(
                [math.exp(run["test_loss"]) for run in group]
            )
        if first["kind"] == MK:
            row["copy_spread_initial"] = statistics.fmean(run["copy_spread_initial"] for run in group)
            row["copy_spread"] = statistics.fmean(run["copy_spread"] for run in group)
        row["kept_epoch"] = statistics.fmean(run["kept_epoch"] for run in group)
        for key in ("epoch_time_s", "train_time_s", "deployed_inference_time_s"):
            row[key] = statistics.fmean(run[key] for run in group)
            row[key[:-2] + "_ratio"] = row[key] / dense_means[key]
        row["train_parameters"] = first["train_parameters"]
        row["deployed_parameters"] = first["deployed_parameters"]
        row["deployed_matches"] = all(run["deployed_matches"] for run in group)
        row["deployed_max_output_difference"] = max(run["deployed_max_output_difference"] for run in group)
        rows.append(row)
    # A classifier's test loss too: it moves where the accuracy of a few hundred test items cannot.
    loss_gain = gain_rows(by_variant, "test_loss", -1.0) if info["task_kind"] != LANGUAGE_MODEL else []
    return {
        "meta": info,
        "summary": rows,
        "gain": gain_rows(by_variant, *headline(info["task_kind"])),
        "gain_test_loss": loss_gain,
        "tuning": tuning,
        "runs": runs,
    }


Column = tuple[str, Callable[[dict], str]]


def _plus_minus(key: str, scale: float = 1.0, digits: int = 2, signed: bool = False) -> Callable[[dict], str]:
    sign = "+" if signed else ""
    return lambda row: f"{row[key] * scale:{sign}.{digits}f} ± {row[f'{key}_std'] * scale:.{digits}f}"


def _delta(key: str, scale: float = 1.0, digits: int = 2) -> Callable[[dict], str]:
    """The paired difference to dense; a dash on the dense row itself."""
    cell = _plus_minus(f"{key}_delta", scale, digits, signed=True)
    return lambda row: "–" if row["kind"] == DENSE else cell(row)


def _check(row: dict) -> str:
    verdict = "yes" if row["deployed_matches"] else "NO"
    return f"{verdict} (max diff {row['deployed_max_output_difference']:.1e})"


def _hyperparameters(row: dict) -> str:
    return f"{row['lr']:g} / {row['weight_decay']:g}"


COMMON_COLUMNS: list[Column] = [
    ("lr / wd (chosen)", _hyperparameters),
    ("kept epoch", lambda row: f"{row['kept_epoch']:.1f}"),
    (
        "copy spread start → end",
        lambda row: "–" if row["kind"] != MK else f"{row['copy_spread_initial']:.3f} → {row['copy_spread']:.3f}",
    ),
    ("s / epoch (× dense)", lambda row: f"{row['epoch_time_s']:.3f} ({row['epoch_time_ratio']:.2f})"),
    ("train s (× dense)", lambda row: f"{row['train_time_s']:.1f} ({row['train_time_ratio']:.2f})"),
    ("params train → deployed", lambda row: f"{row['train_parameters']:,} → {row['deployed_parameters']:,}"),
    (
        "inference ms (× dense)",
        lambda row: f"{row['deployed_inference_time_s'] * 1e3:.2f} ({row['deployed_inference_time_ratio']:.2f})",
    ),
    ("deployed = MK eval", _check),
]

CLASSIFICATION_COLUMNS: list[Column] = [
    ("variant", lambda row: row["variant"]),
    ("test accuracy %", _plus_minus("test_accuracy", 100)),
    ("Δ accuracy vs dense (pp)", _delta("test_accuracy", 100)),
    ("test loss", _plus_minus("test_loss", digits=4)),
    ("validation accuracy %", _plus_minus("validation_accuracy", 100)),
    *COMMON_COLUMNS,
]

LANGUAGE_MODEL_COLUMNS: list[Column] = [
    ("variant", lambda row: row["variant"]),
    ("test loss (nats/char)", _plus_minus("test_loss", digits=4)),
    ("Δ loss vs dense", _delta("test_loss", digits=4)),
    ("test perplexity", _plus_minus("test_perplexity", digits=3)),
    ("next-char accuracy %", _plus_minus("test_accuracy", 100)),
    ("validation loss", _plus_minus("validation_loss", digits=4)),
    *COMMON_COLUMNS,
]

NOTES = """\
Mean ± sample standard deviation over seeds. Each variant trained every learning rate / weight decay of the grid
on the first seed(s) and kept the pair with the best validation score (accuracy, ties broken by loss; a language
model: the loss); the validation split is carved out of the training data, and the test data is evaluated once
per final run, after training. Δ vs dense: the difference to the dense run of the same seed (same batch order;
the same initial weights for "replicate"), mean ± std over seeds. Kept epoch: the epoch whose weights were
evaluated (the best validation epoch under early stopping, else the last). s / epoch: each run's fastest training
epoch (evaluation excluded; the least disturbed by other load); train s: its whole training time; both averaged
over seeds. Inference: the deployed model over the whole validation split, median of 5 passes. Deployed: the model
collapsed to its mean kernels and loaded into a freshly built dense model; "deployed = MK eval" says whether its
test accuracy equals the MK model's in eval mode, with the largest difference of their outputs over the test set.
Copy spread: the copies' RMS distance from their mean relative to the mean's norm, over all MK layers."""

GAIN_NOTES = """\
Gain: the test metric's improvement over the dense run of the same seed (accuracy in percentage points; a loss:
its decrease, for a language model in nats/char), mean and 95% t interval over seeds. Share: MK's mean gain
divided by the wide model's, with Fieller's 95% interval for a ratio of paired means; it is undefined (–) unless
the wide model's gain is significantly above 0, since a share of no gain means nothing. An interval reaching
above 1 means MK may gain as much as the wide model; one reaching below 0, that MK may do worse than dense."""


def _interval(values: dict, scale: float, digits: int) -> str:
    if values["low"] is None:
        return f"{values['mean'] * scale:+.{digits}f}"
    return (
        f"{values['mean'] * scale:+.{digits}f} [{values['low'] * scale:+.{digits}f}, "
        f"{values['high'] * scale:+.{digits}f}]"
    )


def _share(row: dict) -> str:
    if not row["defined"]:
        point = "" if row["share"] is None else f" (point {row['share']:.2f})"
        return f"– wide gain not > 0{point}"
    return f"{row['share']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


METRIC_NAMES = {"test_accuracy": ("test accuracy (pp)", 100.0, 2), "test_loss": ("test loss", 1.0, 4)}


def gain_table(report: dict) -> str:
    """The share of the wide model's gain that MK recovers, as a Markdown table: on the headline metric, and for a
    classifier on its test loss too."""
    lines = [
        "| metric | MK variant | reference | MK gain | wide gain | share of the wide gain |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in report["gain"] + report.get("gain_test_loss", []):
        name, scale, digits = METRIC_NAMES[row["metric"]]
        lines.append(
            f"| {name} | {row['variant']} | {row['wide']} | {_interval(row['mk_gain'], scale, digits)} | "
            f"{_interval(row['wide_gain'], scale, digits)} | {_share(row)} |"
        )
    return "\n".join(lines)


def tuning_table(report: dict) -> str:
    """Every variant's validation score at each grid point, the chosen one in bold."""
    language_model = report["meta"]["task_kind"] == LANGUAGE_MODEL
    points = list(dict.fromkeys((entry["lr"], entry["weight_decay"]) for entry in report["tuning"]))
    header = "validation loss" if language_model else "validation accuracy %"
    lines = [
        f"| {header} | " + " | ".join(f"lr {lr:g}, wd {wd:g}" for lr, wd in points) + " |",
        "|---|" + "---:|" * len(points),
    ]
    by_variant: dict[str, dict] = {}
    for entry in report["tuning"]:
        value = -entry["validation_score"][0] if language_model else entry["validation_score"][0] * 100
        text = "diverged" if math.isinf(value) else f"{value:.4f}" if language_model else f"{value:.2f}"
        by_variant.setdefault(entry["variant"], {})[(entry["lr"], entry["weight_decay"])] = (
            f"**{text}**" if entry["chosen"] else text
        )
    lines += [
        f"| {label} | " + " | ".join(cells[point] for point in points) + " |" for label, cells in by_variant.items()
    ]
    return "\n".join(lines)


def summary_table(report: dict) -> str:
    """The summary as a Markdown table (also what the terminal shows)."""
    language_model = report["meta"]["task_kind"] == LANGUAGE_MODEL
    columns = LANGUAGE_MODEL_COLUMNS if language_model else CLASSIFICATION_COLUMNS
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in report["summary"]]
    return "\n".join(lines)


def _recipe(config: dict) -> str:
    optimizer = "SGD, momentum 0.9" if config["optimizer"] == "sgd" else "AdamW"
    stopping = (
        "the last epoch's weights"
        if config["patience"] is None
        else f"early stopping on the validation score (patience {config['patience']}), the best epoch's weights"
    )
    grid = (
        f"learning rate from {{{', '.join(f'{lr:g}' for lr in config['lrs'])}}}, weight decay from "
        f"{{{', '.join(f'{wd:g}' for wd in config['weight_decays'])}}}"
    )
    return (
        f"{optimizer}, batch {config['batch_size']}, up to {config['epochs']} epochs with a cosine decay to 0, "
        f"{stopping}; {grid}, picked per variant on {config['tune_seeds']} seed(s); final runs on seeds "
        f"0..{config['seeds'] - 1}"
    )


def to_markdown(report: dict, plots: list[Path] = ()) -> str:
    meta = report["meta"]
    config = meta["config"]
    wide = [row for row in report["summary"] if row["kind"] == WIDE]
    lines = [
        f"# majority-kernels train: {meta['name']}",
        "",
        describe(config),
        "",
        f"- task: {meta['task_description']}; used: {meta['train_samples']} train / {meta['validation_samples']} "
        f"validation / {meta['test_samples']} test items",
        f"- model: {config['model']}; wide references: the hidden widths × "
        f"{', '.join(format(row['width'], '.3f') for row in wide) or '–'} (parameters ≈ e × dense)",
        f"- training: {_recipe(config)}",
        f"- device: {meta['device']} ({meta['device_name']}, torch threads: {meta['torch_threads']}), backend "
        f"{meta['backend']}, torch {meta['torch']}, Python {meta['python']}, majority-kernels "
        f"{meta['majority_kernels']}",
        f"- wall time: {meta['wall_time_s']:.0f} s (hyperparameter search included), {meta['date']}",
        "",
        summary_table(report),
        "",
        NOTES,
        "",
        "## Share of the wide model's gain that MK recovers",
        "",
        gain_table(report) if report["gain"] else "No wide reference in this run.",
        "",
        GAIN_NOTES,
        "",
        "## Hyperparameter search",
        "",
        tuning_table(report),
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
