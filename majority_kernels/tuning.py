"""Tuning tables: the per-GPU values of the dispatch thresholds and the elementwise block size.

A table is a small JSON file that `majority-kernels tune` writes for the GPU it runs on (format in docs/gpu.md):

    {"format": 1, "gpu": "NVIDIA H200", "majority_kernels": "0.1.0", "torch": ..., "triton": ..., "date": ...,
     "quick": false, "thresholds": {"cuda_fused_max_rows": 16, ...}, "measurements": {...}}

Tables are read from the user's folder (MK_TUNING_DIR, else $XDG_CACHE_HOME/majority-kernels/tuning, else
~/.cache/majority-kernels/tuning) and from the tables shipped in majority_kernels/tuning_tables/; the user's win.
Only a table of this majority-kernels version counts. A GPU without one runs on DEFAULTS, the values the kernels
were designed for but not measured with, announced once per process and GPU.

The folders are read when this module is imported (and again by `reload`), never while a layer runs: `for_device`
only looks up dicts, by device and by the device's name, which torch.compile can trace (it folds the device
properties to constants), so a compiled layer bakes in the values in force when it was traced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ._version import __version__

FORMAT = 1
TUNING_DIR_VARIABLE = "MK_TUNING_DIR"
SHIPPED_DIR = Path(__file__).parent / "tuning_tables"


@dataclass(frozen=True)
class Thresholds:
    """What the dispatch reads per GPU.

    cuda_fused_max_rows:        input rows up to which the `cuda` backend's linear layer runs its fused small-M
                                forward (cuda_ops), else combine + cuBLAS.
    triton_fused_forward_max_m: rows M up to which the `triton` backend's linear forward builds W_eff inside its
                                GEMM, else combine + cuBLAS.
    triton_fused_wgrad_max_m:   rows M up to which its weight gradient is one GEMM with the scatter in its
                                epilogue, else cuBLAS + scatter.
    combine_block, scatter_block: elements per program of the Triton combine and scatter kernels (a power of two).
    """

    cuda_fused_max_rows: int
    triton_fused_forward_max_m: int
    triton_fused_wgrad_max_m: int
    combine_block: int
    scatter_block: int

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"tuning threshold {name} must be an integer >= 0, got {value!r}")
        for name in ("combine_block", "scatter_block"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"tuning threshold {name} must be a power of two >= 16, got {value}")


# The unmeasured defaults: the kernels' design points. The fused small-M CUDA forward re-runs the mixing per tile of
# 16 rows; the fused Triton forward redoes the draws per row tile, so it can only win while one or two tiles cover
# M; the fused dW saves writing and re-reading dW_eff but has smaller tiles than cuBLAS; 1024 elements over 4 warps
# give each thread 8 contiguous elements per copy (16-byte loads of float32).
DEFAULTS = Thresholds(
    cuda_fused_max_rows=16,
    triton_fused_forward_max_m=64,
    triton_fused_wgrad_max_m=1024,
    combine_block=1024,
    scatter_block=1024,
)


@dataclass(frozen=True)
class Table:
    """One GPU's measured thresholds, with what they were measured with."""

    gpu: str
    majority_kernels: str
    thresholds: Thresholds
    torch: str = ""
    triton: str = ""
    date: str = ""
    quick: bool = False
    measurements: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "gpu": self.gpu,
            "majority_kernels": self.majority_kernels,
            "torch": self.torch,
            "triton": self.triton,
            "date": self.date,
            "quick": self.quick,
            "thresholds": dataclasses.asdict(self.thresholds),
            "measurements": self.measurements,
        }

    @classmethod
    def from_json(cls, data: Any) -> Table:
        """The table in `data` (a parsed JSON file); ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a tuning table is a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"tuning table format must be {FORMAT}, got {data.get('format')!r}")
        for key in ("gpu", "majority_kernels"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"tuning table field {key!r} must be a non-empty string, got {data.get(key)!r}")
        values = data.get("thresholds")
        names = {field.name for field in dataclasses.fields(Thresholds)}
        if not isinstance(values, dict) or set(values) != names:
            raise ValueError(
                f"tuning table field 'thresholds' must have exactly the keys {sorted(names)}, got "
                f"{sorted(values) if isinstance(values, dict) else values!r}"
            )
        if not isinstance(data.get("measurements", {}), dict):
            raise ValueError(f"tuning table field 'measurements' must be an object, got {data['measurements']!r}")
        return cls(
            gpu=data["gpu"],
            majority_kernels=data["majority_kernels"],
            thresholds=Thresholds(**values),
            torch=str(data.get("torch", "")),
            triton=str(data.get("triton", "")),
            date=str(data.get("date", "")),
            quick=bool(data.get("quick", False)),
            measurements=data.get("measurements", {}),
        )


def slug(text: str) -> str:
    """A file-name form of a GPU name: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def file_name(gpu: str, version: str = __version__) -> str:
    return f"{slug(gpu)}-mk{version}.json"


def user_dir() -> Path:
    """The folder a user's own `majority-kernels tune` writes to, and that is read before the shipped tables."""
    configured = os.environ.get(TUNING_DIR_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) if cache else Path.home() / ".cache") / "majority-kernels" / "tuning"


def search_dirs() -> list[Path]:
    """Where tables are read from, the first winning: the user's folder, then the shipped tables."""
    return [user_dir(), SHIPPED_DIR]


def write(table: Table, folder: Optional[Path] = None) -> Path:
    """Writes `table` as <folder>/<gpu slug>-mk<version>.json (folder: user_dir()) and returns the path."""
    folder = user_dir() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(table.gpu, table.majority_kernels)
    path.write_text(json.dumps(table.to_json(), indent=1) + "\n")
    return path


def read(path: Path) -> Table:
    """The table in the JSON file `path`; ValueError naming the file for one that is not a valid table."""
    try:
        return Table.from_json(json.loads(Path(path).read_text()))
    except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a valid tuning table: {error}") from None


@dataclass
class _Loaded:
    tables: dict[str, Table]  # by GPU name, this version's only
    other_versions: dict[str, list]  # by GPU name: (version, path) of the tables of other versions
    folders: list[Path]


def _load(folders: list[Path]) -> _Loaded:
    loaded = _Loaded({}, {}, folders)
    for folder in reversed(folders):  # the first folder read last: its tables win
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                table = read(path)
            except (OSError, ValueError) as error:
                warnings.warn(f"majority-kernels: ignoring {error}", RuntimeWarning, stacklevel=3)
                continue
            if table.majority_kernels == __version__:
                loaded.tables[table.gpu] = table
            else:
                loaded.other_versions.setdefault(table.gpu, []).append((table.majority_kernels, str(path)))
    return loaded


_loaded = _load(search_dirs())
_noted: set[str] = set()
# By (device type, index), the thresholds for_device found.
_by_device: dict[tuple[str, Optional[int]], Thresholds] = {}


def reload() -> None:
    """Reads the folders again (after MK_TUNING_DIR changed, or a tune run wrote a table) and forgets which GPUs
    were announced as unmeasured. Layers compiled before keep the values they were traced with."""
    global _loaded
    _loaded = _load(search_dirs())
    _noted.clear()
    _by_device.clear()


def table_for(gpu: str) -> Optional[Table]:
    """This version's table for the GPU named `gpu` (torch.cuda.get_device_name), or None."""
    return _loaded.tables.get(gpu)


def _note_unmeasured(gpu: str) -> None:
    if gpu in _noted:
        return
    _noted.add(gpu)
    others = _loaded.other_versions.get(gpu, [])
    found = f"; tables of other versions ignored: {', '.join(f'{v} ({p})' for v, p in others)}" if others else ""
    values = ", ".join(f"{name}={value}" for name, value in dataclasses.asdict(DEFAULTS).items())
    warnings.warn(
        f"majority-kernels: no tuning table for GPU {gpu!r} and majority-kernels {__version__} in "
        f"{', '.join(str(f) for f in _loaded.folders)}{found}. Using the unmeasured defaults ({values}); "
        "`majority-kernels tune --device cuda` measures this GPU's.",
        RuntimeWarning,
        stacklevel=4,
    )


def device_gpu(device: torch.device) -> Optional[str]:
    """The GPU name tables are keyed by (torch.cuda.get_device_name's) for a CUDA device, None for any other."""
    return torch.cuda.get_device_properties(device).name if device.type == "cuda" else None


def for_device(device: torch.device) -> Thresholds:
    """The thresholds for `device`: its GPU's table, else DEFAULTS (announced once per process and GPU), cached per
    device. Devices other than CUDA GPUs (the Triton interpreter's CPU tensors) take DEFAULTS silently: there is
    nothing to tune."""
    key = (device.type, device.index)
    found = _by_device.get(key)
    if found is not None:
        return found
    gpu = device_gpu(device)
    table = None if gpu is None else table_for(gpu)
    found = DEFAULTS if table is None else table.thresholds
    # While torch.compile traces, nothing is noted or cached (side effects it would have to replay); eager calls do.
    if not torch.compiler.is_compiling():
        if gpu is not None and table is None:
            _note_unmeasured(gpu)
        _by_device[key] = found
    return found
