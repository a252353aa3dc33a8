"""benchmarks/gpu_check.sh and its summary without a GPU: the script refuses in one line, before building anything,
and the summary reads a benchmark report and a tuning table."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

from majority_kernels import tuning

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_summary  # noqa: E402


def _check(*args, env=None):
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        timeout=120,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("part", ["quick", "full"])
def test_check_stops_in_one_line_without_a_gpu(part, tmp_path):
    result = _check(part, env={"GPU_CHECK_OUT": str(tmp_path / "out")})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no CUDA GPU visible to torch" in result.stderr
    assert not (tmp_path / "out").exists()  # stopped before writing or building anything


def test_check_needs_a_part():
    result = _check()
    assert result.returncode == 2 and "usage: bash benchmarks/gpu_check.sh quick|full" in result.stderr


def test_summary_of_a_report_and_a_table():
    bench = json.loads((ROOT / "benchmarks" / "results" / "cpu-intel-xeon-2cores-float32.json").read_text())
    bench["meta"]["cuda"] = None
    defaults = dataclasses.asdict(tuning.DEFAULTS)
    table = {"majority_kernels": "0.1.0", "quick": True, "thresholds": {**defaults, "triton_fused_forward_max_m": 16}}
    steps = [{"step": "build", "status": "ok", "seconds": 80, "limit": 150}]
    text = gpu_summary.summary(bench, table, steps, defaults)
    dense = next(
        row
        for row in bench["linear"]
        if row["variant"] == "naive" and row["shape"] == "256x1024x1024" and row["expansion"] == 4
    )
    assert f"{dense['time_s'] * 1e3:.3f}" in text  # the naive layer's time of that case
    assert "linear 256x1024x1024 e=4, one training step:" in text and "× compiled" in text
    assert "combine: mk[cpu]" in text and "steps: build ok 80 s" in text
    assert "triton_fused_forward_max_m 16 (default 64)" in text and "combine_block 1024;" in text
    assert gpu_summary.summary(None, None, [], defaults).splitlines() == ["no benchmark results", "no tuning table"]
