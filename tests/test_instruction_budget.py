"""The draw of P stays cheap enough for the mixing kernels to be memory-bound on an H200: the sm_90 builds of the
Triton combine and scatter at e = 4 (benchmarks/sm90_instructions.py, no GPU needed) within a budget of
instructions per element (docs/design.md section 6: memory-bound below about 140; spec v2 builds measured 84 and
88 with Triton 3.9)."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from majority_kernels import backends

BUDGET = 100  # SASS instructions per weight element at e = 4

_COUNT = "from sm90_instructions import elementwise_instructions; print(*elementwise_instructions(4))"


@pytest.mark.skipif(backends.TRITON_ERROR is not None, reason="needs Triton")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the benchmarks measure the kernels themselves")
def test_combine_and_scatter_within_instruction_budget():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(pathlib.Path(__file__).parents[1] / "benchmarks"), *filter(None, [env.get("PYTHONPATH")])]
    )
    result = subprocess.run([sys.executable, "-c", _COUNT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    combine, scatter = map(float, result.stdout.split()[-2:])
    assert combine <= BUDGET and scatter <= BUDGET, (combine, scatter)
