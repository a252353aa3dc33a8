"""The report's plots (PNG): the final test metric against the expansion, with dense and the wide models as
references, and the per-epoch curves (training loss, validation metric).

Drawn on matplotlib Figure objects, without pyplot, so writing them never changes the caller's matplotlib backend.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .data import LANGUAGE_MODEL
from .presets import DENSE, MK, WIDE

INIT_STYLES = {"replicate": "-", "independent": ":"}
INIT_OFFSETS = {"replicate": 0.96, "independent": 0.92}  # keeps the error bars apart on the log axis
WIDE_OFFSET = 1.04
EXPANSION_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"]
WIDE_COLOR = "tab:gray"


def _figure(columns: int = 1):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the plots need matplotlib: pip install 'majority-kernels[train]'") from error
    figure = Figure(figsize=(6.4 * columns, 4.4), layout="constrained")
    return figure, figure.subplots(1, columns)


def _final_metric(report: dict) -> tuple[str, str, float]:
    """The summary key plotted against the expansion, its axis label and the scale from the stored value."""
    if report["meta"]["task_kind"] == LANGUAGE_MODEL:
        return "test_loss", "test loss, nats/char (lower is better)", 1.0
    return "test_accuracy", "test accuracy % (higher is better)", 100.0


def plot_metric_vs_expansion(report: dict, folder: Path) -> Path:
    key, label, scale = _final_metric(report)
    figure, axes = _figure()
    rows = report["summary"]
    dense = rows[0]
    mean, std = dense[key] * scale, dense[f"{key}_std"] * scale
    axes.axhspan(mean - std, mean + std, color="0.88", label="dense ± std")
    axes.axhline(mean, color="black", linewidth=1.2, label="dense")
    wide = sorted(
        (row["expansion"], row[key] * scale, row[f"{key}_std"] * scale) for row in rows if row["kind"] == WIDE
    )
    if wide:
        expansions, means, stds = zip(*wide)
        axes.errorbar(
            [1, *(e * WIDE_OFFSET for e in expansions)],
            [mean, *means],
            yerr=[0, *stds],
            fmt="s--",
            color=WIDE_COLOR,
            capsize=4,
            label="wide dense (≈ e × parameters)",
        )
    for init, style in INIT_STYLES.items():
        points = sorted(
            (row["expansion"], row[key] * scale, row[f"{key}_std"] * scale)
            for row in rows
            if row["kind"] == MK and row["init"] == init
        )
        if points:
            expansions, means, stds = zip(*points)
            axes.errorbar(
                [e * INIT_OFFSETS[init] for e in expansions],
                means,
                yerr=stds,
                fmt="o" + style,
                capsize=4,
                label=f"MK, init={init} (dense size deployed)",
            )
    expansions = sorted({1, *(row["expansion"] for row in rows[1:])})
    axes.set_xscale("log", base=2)
    axes.set_xticks(expansions, [str(e) for e in expansions])
    axes.set_xlabel("expansion e (1 = dense)")
    axes.set_ylabel(label)
    axes.set_title(f"{report['meta']['name']}: {report['meta']['task']}, mean ± std over {dense['seeds']} seeds")
    axes.legend(fontsize="small")
    path = folder / f"{key}_vs_expansion.png"
    figure.savefig(path, dpi=120)
    return path


def _epoch_means(runs: list[dict], key: str) -> list[float]:
    """The per-epoch mean over the runs (seeds) of one variant that trained that long (early stopping ends runs
    at different epochs)."""
    longest = max(len(run["epochs"]) for run in runs)
    return [
        statistics.fmean(run["epochs"][epoch][key] for run in runs if len(run["epochs"]) > epoch)
        for epoch in range(longest)
    ]


def _style(row: dict, expansions: list[int]) -> dict:
    if row["kind"] == DENSE:
        return {"color": "black", "linestyle": "-", "linewidth": 2}
    color = EXPANSION_COLORS[expansions.index(row["expansion"]) % len(EXPANSION_COLORS)]
    if row["kind"] == WIDE:
        return {"color": color, "linestyle": "--", "linewidth": 1.2, "alpha": 0.7}
    return {"color": color, "linestyle": INIT_STYLES[row["init"]], "linewidth": 1.4}


def plot_curves(report: dict, folder: Path) -> Path:
    """Training loss, validation loss and (classification) validation accuracy per epoch, mean over seeds."""
    language_model = report["meta"]["task_kind"] == LANGUAGE_MODEL
    panels = [
        ("train_loss", "training loss (mean over the epoch's batches)", 1.0),
        ("validation_loss", "validation loss" + (" (nats/char)" if language_model else ""), 1.0),
    ]
    if not language_model:
        panels.append(("validation_accuracy", "validation accuracy %", 100.0))
    figure, axes_list = _figure(columns=len(panels))
    expansions = sorted({row["expansion"] for row in report["summary"][1:]})
    for row in report["summary"]:
        runs = [run for run in report["runs"] if run["variant"] == row["variant"]]
        style = _style(row, expansions)
        for axes, (key, _, scale) in zip(axes_list, panels):
            values = [value * scale for value in _epoch_means(runs, key)]
            axes.plot(range(1, len(values) + 1), values, label=row["variant"], **style)
    for axes, (_, label, _) in zip(axes_list, panels):
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    axes_list[0].set_yscale("log")
    if not language_model:
        # The last epochs decide; the first ones would stretch the axis down to chance level.
        final = [row["validation_accuracy"] * 100 for row in report["summary"]]
        axes_list[2].set_ylim(max(0.0, min(final) - 6), min(100.0, max(final) + 2))
    axes_list[0].legend(fontsize="small")
    figure.suptitle(
        f"{report['meta']['name']}: {report['meta']['task']}, mean over "
        f"{report['summary'][0]['seeds']} seeds (validation split; the test data is evaluated once, "
        f"at the end)"
    )
    path = folder / "curves.png"
    figure.savefig(path, dpi=110)
    return path


def write_plots(report: dict, folder: Path) -> list[Path]:
    """Both plots, written into `folder`; returns their paths."""
    return [plot_metric_vs_expansion(report, folder), plot_curves(report, folder)]
