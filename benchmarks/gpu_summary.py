"""The one-screen summary of `benchmarks/gpu_check.sh quick`: the key ratios of the headline benchmark, the tuning
table measured next to the defaults, and the steps' status and times, from the JSON files the check wrote.

    python benchmarks/gpu_summary.py <results folder> <gpu slug>
"""

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Optional

MIB = 2**20


def _ms(seconds: Optional[float]) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3f}"


def _ratio(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def _mib(value: Optional[int]) -> str:
    return "–" if value is None else f"{value / MIB:.0f}"


def linear_lines(rows: list) -> list:
    """Per linear case: the baselines and each backend on its own choice of paths, then the fastest of the Triton
    backend's forced paths (named mk[triton:forward,dW-dW])."""
    lines = []
    for case in dict.fromkeys((row["shape"], row["expansion"]) for row in rows):
        case_rows = [row for row in rows if (row["shape"], row["expansion"]) == case]
        lines.append(f"linear {case[0]} e={case[1]}, one training step:")
        lines.append(
            f"  {'variant':<28}{'ms':>9}{'× dense':>9}{'× naive':>9}{'× compiled':>12}{'saved MiB':>11}{'peak MiB':>10}"
        )
        for row in (row for row in case_rows if ":" not in row["variant"]):
            lines.append(
                f"  {row['variant']:<28}{_ms(row['time_s']):>9}{_ratio(row.get('ratio_dense')):>9}"
                f"{_ratio(row.get('ratio_naive')):>9}{_ratio(row.get('ratio_compiled')):>12}"
                f"{_mib(row.get('saved_bytes_excl_params')):>11}{_mib(row.get('peak_bytes')):>10}"
            )
        forced = [row for row in case_rows if ":" in row["variant"]]
        if forced:
            best = min(forced, key=lambda row: row["time_s"])
            lines.append(
                f"  fastest forced path: {best['variant']} {_ms(best['time_s'])} ms "
                f"({_ratio(best.get('ratio_dense'))} × dense)"
            )
    return lines


def kernel_lines(rows: list) -> list:
    """combine and scatter per implementation: time and share of the copy bandwidth."""
    lines = []
    for shape in dict.fromkeys(row["shape"] for row in rows):
        lines.append(f"kernels alone, weight {shape}: time, % of copy bandwidth")
        for op in ("combine", "scatter"):
            cells = [
                f"{row['variant']} {_ms(row['time_s'])} ms {row['copy_bandwidth_fraction'] * 100:.0f}%"
                for row in rows
                if row["shape"] == shape and row["op"] == op
            ]
            lines.append(f"  {op}: " + "; ".join(cells))
    return lines


def tuning_lines(table: dict, defaults: dict) -> list:
    kind = "quick" if table.get("quick") else "full"
    cells = [
        f"{name} {value}" + ("" if value == defaults.get(name) else f" (default {defaults.get(name)})")
        for name, value in table["thresholds"].items()
    ]
    return [f"tuning table ({kind}), majority-kernels {table['majority_kernels']}:", "  " + "; ".join(cells)]


def summary(bench: Optional[dict], table: Optional[dict], steps: list, defaults: dict) -> str:
    lines = []
    if steps:
        lines.append("steps: " + " | ".join(f"{s['step']} {s['status']} {s['seconds']} s" for s in steps))
    if bench is None:
        lines.append("no benchmark results")
    else:
        meta = bench["meta"]
        lines.insert(
            0,
            f"{meta['device_name']}: torch {meta['torch']}, CUDA {meta['cuda']}, dtype {meta['dtype']}"
            f"{' (autocast, float32 master weights)' if meta['autocast'] else ''}",
        )
        lines.append(f"copy bandwidth {meta['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s")
        lines += linear_lines(bench.get("linear", [])) + kernel_lines(bench.get("kernels", []))
    lines += tuning_lines(table, defaults) if table is not None else ["no tuning table"]
    return "\n".join(lines)


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("gpu", help="the GPU's slug, as in the file names")
    args = parser.parse_args()
    from majority_kernels import tuning

    tables = sorted(args.folder.glob(f"{args.gpu}-mk*.json"))
    print(
        summary(
            _load(args.folder / f"{args.gpu}-bench.json"),
            _load(tables[-1]) if tables else None,
            _load(args.folder / f"{args.gpu}-quick-steps.json") or [],
            dataclasses.asdict(tuning.DEFAULTS),
        )
    )


if __name__ == "__main__":
    main()
