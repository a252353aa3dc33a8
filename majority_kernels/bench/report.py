"""The run's description and the report files: JSON (everything, raw samples included) and a Markdown table."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import __version__, ops, reference
from .config import BenchConfig
from .variants import FUSED

RESULTS_DIR = Path("benchmarks/results")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_name(device: torch.device, dtype: torch.dtype) -> str:
    """A file stem naming the machine (no host name), e.g. cpu-amd-epyc-2cores-float32."""
    dtype_name = str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        return f"cuda-{_slug(torch.cuda.get_device_name(device))}-{dtype_name}"
    return f"cpu-{_slug(cpu_model())}-{os.cpu_count()}cores-{dtype_name}"


def resolve_output(output: Optional[str], name: str) -> Path:
    """The file stem to write: `name` in benchmarks/results/ (relative to the working directory) by default or in
    `output` when it is a folder (existing, or ending in a separator); else `output` itself, less a .json/.md."""
    if output is None:
        return RESULTS_DIR / name
    path = Path(output)
    if path.is_dir() or output.endswith(("/", os.sep)):
        return path / name
    return path.with_suffix("") if path.suffix in (".json", ".md") else path


def run_info(config: BenchConfig, bandwidth: float, skipped: dict[str, str]) -> dict:
    """The run's description: what ran where, with which versions and settings, the copy bandwidth, and the
    sections asked for that cannot run here (`skipped`: section -> why)."""
    device = config.device
    return {
        "name": config.output.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "majority_kernels": __version__,
        "backends": list(config.backends),
        "dtype": str(config.dtype).removeprefix("torch."),
        "autocast": config.dtype != torch.float32,
        "repeats": config.repeats,
        "warmup": config.warmup,
        "compile": config.compile,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "skipped_sections": skipped,
        "allocator_settings": allocator_settings(),
        "spec": reference.SPEC_VERSION,
        "cpu_kernels": ops.cpu_capability() if device.type == "cpu" else None,
    }


# Environment variables that change how the CPU allocator maps and returns large blocks (glibc's tunables, an
# allocator preloaded in its place): on the CPU they move step times a lot (docs/benchmarks.md, "CPU memory allocator").
_ALLOCATOR_VARIABLES = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_CONF")


def allocator_settings() -> dict[str, str]:
    """The allocator settings of this process's environment, by variable."""
    return {
        name: value
        for name, value in sorted(os.environ.items())
        if name in _ALLOCATOR_VARIABLES or (name.startswith("MALLOC_") and name.endswith("_"))
    }


Column = tuple[str, Callable[[dict], str]]


def _number(key: str, scale: float = 1.0, digits: int = 2) -> Callable[[dict], str]:
    """Formats row[key] * scale; a dash where the row has no value."""

    def format_value(row: dict) -> str:
        value = row.get(key)
        return "–" if value is None else f"{value * scale:.{digits}f}"

    return format_value


def _text(key: str) -> Callable[[dict], str]:
    return lambda row: str(row[key])


MS, MIB = 1e3, 1 / 2**20

LAYER_COLUMNS: list[Column] = [
    ("shape", _text("shape")),
    ("e", _text("expansion")),
    ("variant", _text("variant")),
    ("median ms", _number("time_s", MS, 3)),
    ("× dense", _number("ratio_dense")),
    ("× naive", _number("ratio_naive")),
    ("× compiled", _number("ratio_compiled")),
    ("saved MiB", _number("saved_bytes_excl_params", MIB)),
    ("+ params MiB", _number("saved_param_bytes", MIB)),
    ("peak MiB", _number("peak_bytes", MIB)),
    ("extra ms", _number("extra_s", MS, 3)),
    ("floor ms", _number("floor_s", MS, 3)),
    ("extra / floor", _number("extra_over_floor", digits=1)),
    ("% floor", _number("floor_reached", 100, 0)),
]

KERNEL_COLUMNS: list[Column] = [
    ("op", _text("op")),
    ("e×N×K", _text("shape")),
    ("variant", _text("variant")),
    ("median ms", _number("time_s", MS, 3)),
    ("× naive", _number("ratio_naive")),
    ("× compiled", _number("ratio_compiled")),
    ("GB/s", _number("bytes_per_s", 1e-9, 1)),
    ("floor ms", _number("floor_s", MS, 3)),
    ("time / floor", _number("time_over_floor", digits=1)),
    ("% copy BW", _number("copy_bandwidth_fraction", 100, 0)),
]

CROSSOVER_COLUMNS: list[Column] = [
    ("weight N×K", _text("shape")),
    ("e", _text("expansion")),
    ("M", _text("M")),
    ("variant", _text("variant")),
    ("median ms", _number("time_s", MS, 3)),
    ("× combine", _number("ratio_combine")),
]

CONV_FUSED_COLUMNS: list[Column] = [
    ("shape", _text("shape")),
    ("e", _text("expansion")),
    ("variant", _text("variant")),
    ("median ms", _number("time_s", MS, 3)),
    ("× dense", _number("ratio_dense")),
    ("× combine", _number("ratio_combine")),
]

SECTION_TITLES = {
    "linear": ("Linear (x: M×K, weight: N×K)", LAYER_COLUMNS),
    "conv": ("Conv2d (batch×C_in×C_out×H×W×kernel, stride 1, same padding)", LAYER_COLUMNS),
    "kernels": ("Kernels alone (weight e×N×K)", KERNEL_COLUMNS),
    "crossover": (
        "Triton linear paths over M (one training step; × combine = time / the combine path's)",
        CROSSOVER_COLUMNS,
    ),
    "conv-fused": (
        "Conv2d forward: the fused implicit GEMM against combine + cuDNN (× combine = time / the fastest mk[...]'s)",
        CONV_FUSED_COLUMNS,
    ),
}

NOTES = """\
Times are medians of the repeats, all variants of a case timed in turn in the same rounds; × X = time / X's time.
Layers: one training step, forward + backward, of an intermediate layer (the input requires grad: 3 GEMMs),
gradients set to None between steps. saved = bytes of the distinct storages autograd keeps for the backward,
parameters apart (they are resident anyway). peak = CUDA peak allocation during a step above what was allocated
before it. extra = time - dense time; floor = least extra bytes over dense (docs/design.md section 6: read the copies,
write W_eff, write the copies' gradients, read dW_eff) / copy bandwidth. Kernels: combine = W_eff from the copies
(naive: P drawn and materialised), scatter = every copy's gradient P_k * dW_eff (naive: multiply by the P kept
from the forward); floor = bytes of the copies + one compute-dtype matrix / copy bandwidth; GB/s = those bytes /
time. % floor = floor / extra (layers) and % copy BW = GB/s / copy bandwidth (kernels): 100 at the floor.
mk[triton:A,B-dW]: the Triton backend with its forward path A (fused: W_eff built inside the GEMM; combine: W_eff,
then cuBLAS) and dW path B (fused: the copies' gradients written by the dW GEMM's epilogue; scatter: cuBLAS, then
scatter) forced; mk[triton] chooses them by M. Conv2d forward: the forward alone (no autograd) under the run's
dtype; mk[X] = combine on backend X (W_eff written in the compute dtype), then F.conv2d (cuDNN); fused[triton] =
one Triton implicit-GEMM convolution that mixes the copies as it loads its weight tiles (a forward-only
prototype)."""


def markdown_table(rows: list[dict], columns: list[Column]) -> str:
    # A column that is empty on every row (no CUDA peak on a CPU, no compiled baseline) is left out.
    columns = [(header, cell) for header, cell in columns if any(cell(row) != "–" for row in rows)]
    lines = [
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|"
        + "|".join(
            "---" if header in ("shape", "e×N×K", "weight N×K", "variant", "op") else "---:" for header, _ in columns
        )
        + "|",
    ]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    return "\n".join(lines)


def _header(meta: dict) -> str:
    device = (
        f"{meta['device_name']}"
        if meta["device"] == "cuda"
        else f"{meta['cpu']}, {meta['cpu_cores']} cores, {meta['torch_threads']} torch threads"
    )
    dtype = meta["dtype"] + (" (autocast, float32 master weights)" if meta["autocast"] else "")
    return "\n".join(
        [
            f"# majority-kernels benchmark: {meta['name']}",
            "",
            f"- device: {meta['device']} ({device})",
            f"- torch {meta['torch']}"
            + (f", CUDA {meta['cuda']}" if meta["cuda"] else "")
            + f", python {meta['python']}, majority-kernels {meta['majority_kernels']}",
            f"- backends: {', '.join(meta['backends'])}; dtype: {dtype}",
            f"- {meta['repeats']} timed rounds after {meta['warmup']} warm-up rounds; torch.compile baseline: "
            f"{'yes' if meta['compile'] else 'no'}; date: {meta['date']}",
            f"- copy bandwidth: {meta['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (large copy_, read + write)",
            f"- mixing weights: spec {meta.get('spec', 'v1')} (docs/design.md section 4)"
            + (f"; CPU kernels: the {meta['cpu_kernels']} build" if meta.get("cpu_kernels") else ""),
            "- allocator settings: "
            + (
                ", ".join(f"{name}={value}" for name, value in meta.get("allocator_settings", {}).items())
                or "none (the defaults)"
            ),
            *(f"- not run: {section}: {why}" for section, why in meta.get("skipped_sections", {}).items()),
        ]
    )


def _stop(m: Optional[int], largest: int) -> str:
    return f"stops paying at M = {m}" if m is not None else f"still pays at M = {largest} (the largest measured)"


def crossover_summary(rows: list[dict]) -> str:
    """One line per swept weight: the M at which each fused path stops paying, next to the thresholds in force."""
    return "\n".join(
        f"- weight {row['shape']}, e = {row['expansion']}: the fused forward "
        f"{_stop(row['fused_forward_stops_at_m'], row['largest_m'])} (threshold in force: "
        f"triton_fused_forward_max_m = {row['fused_forward_max_m']}); the fused dW "
        f"{_stop(row['fused_wgrad_stops_at_m'], row['largest_m'])} (triton_fused_wgrad_max_m = "
        f"{row['fused_wgrad_max_m']})"
        for row in rows
        if row["variant"] == "summary"
    )


def conv_fused_summary(rows: list[dict]) -> str:
    """One line: the cases where the fused convolution is faster than the fastest combine + cuDNN, if any."""
    fused = [row for row in rows if row["role"] == FUSED]
    wins = [
        f"{row['shape']} e = {row['expansion']} ({row['ratio_combine']:.2f}×)"
        for row in fused
        if row["ratio_combine"] < 1
    ]
    if wins:
        return "- the fused implicit GEMM beats combine + cuDNN at: " + ", ".join(wins)
    closest = min(fused, key=lambda row: row["ratio_combine"])
    return (
        f"- the fused implicit GEMM beats combine + cuDNN nowhere measured (closest: {closest['shape']} e = "
        f"{closest['expansion']}, {closest['ratio_combine']:.2f}× the time)"
    )


SUMMARIES: dict[str, Callable[[list[dict]], str]] = {"crossover": crossover_summary, "conv-fused": conv_fused_summary}


def to_markdown(report: dict) -> str:
    parts = [_header(report["meta"]), NOTES]
    for section, (title, columns) in SECTION_TITLES.items():
        rows = report.get(section)
        if rows:
            parts += [f"## {title}", markdown_table([row for row in rows if row["variant"] != "summary"], columns)]
            if section in SUMMARIES:
                parts.append(SUMMARIES[section](rows))
    return "\n\n".join(parts) + "\n"


def write(report: dict, stem: Path) -> list[Path]:
    """Write <stem>.json and <stem>.md (creating the folder); returns their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = Path(f"{stem}.json"), Path(f"{stem}.md")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    markdown_path.write_text(to_markdown(report))
    return [json_path, markdown_path]
