"""The `majority-kernels bench` command end to end, in-process, on tiny shapes."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from majority_kernels import backends, bench
from majority_kernels.cli import main

TINY = ["--shapes", "8x16x16", "--conv-shapes", "2x3x4x6x6x3", "--repeats", "2", "--warmup", "1"]
LAYER_VARIANTS = {"dense", "mk[cpu]", "naive"}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One run over e = 2, 4 without the compiled baseline: (JSON report, Markdown text)."""
    stem = tmp_path_factory.mktemp("bench") / "tiny"
    assert main(["bench", *TINY, "--expansion", "2,4", "--no-compile", "--output", f"{stem}.json"]) == 0
    return json.loads(stem.with_name("tiny.json").read_text()), stem.with_name("tiny.md").read_text()


def test_report_describes_the_run(written):
    meta = written[0]["meta"]
    assert meta["device"] == "cpu" and meta["backends"] == ["cpu"] and meta["dtype"] == "float32"
    assert meta["repeats"] == 2 and meta["compile"] is False and meta["torch"] == torch.__version__
    assert _positive(meta["copy_bandwidth_bytes_per_s"]) and meta["cpu_cores"] >= 1


def test_report_names_the_allocator_settings(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    monkeypatch.setenv("MALLOC_ARENA", "ignored: not a glibc tunable's name")
    assert bench.report.allocator_settings() == {"MALLOC_MMAP_MAX_": "0"}
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert bench.report.allocator_settings() == {"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_MMAP_MAX_": "0"}


def test_markdown_names_default_allocator(written):
    assert "- allocator settings: " in written[1]


@pytest.mark.parametrize("section", ["linear", "conv"])
def test_layer_rows(written, section):
    rows = written[0][section]
    assert {(row["expansion"], row["variant"]) for row in rows} == {(e, v) for e in (2, 4) for v in LAYER_VARIANTS}
    for row in rows:
        assert len(row["times_s"]) == 2
        for key in ("time_s", "ratio_dense", "ratio_naive", "saved_bytes", "floor_s", "floor_extra_bytes"):
            assert _positive(row[key]), (key, row)
        assert row["ratio_compiled"] is None and row["peak_bytes"] is None  # no compile, no CUDA
        assert (row["extra_s"] is None) == (row["variant"] == "dense")
    dense = next(row for row in rows if row["variant"] == "dense")
    assert dense["ratio_dense"] == 1.0 and dense["saved_param_bytes"] > 0


def test_kernel_rows(written):
    rows = written[0]["kernels"]
    assert {(row["op"], row["shape"], row["variant"]) for row in rows} == {
        (op, f"{e}x16x16", v) for op in ("combine", "scatter") for e in (2, 4) for v in ("mk[cpu]", "naive")
    }
    for row in rows:
        for key in ("time_s", "ratio_naive", "floor_s", "time_over_floor", "bytes_per_s"):
            assert _positive(row[key]), (key, row)


@pytest.mark.parametrize("section", ["linear", "conv"])
def test_saved_bytes_mk_flat_naive_grows(written, section):
    saved = {(row["variant"], row["expansion"]): row["saved_bytes"] for row in written[0][section]}
    assert saved["mk[cpu]", 2] == saved["mk[cpu]", 4]  # the input and W_eff, whatever the expansion
    assert saved["naive", 4] > saved["naive", 2]  # P is kept for the backward
    assert saved["naive", 2] > saved["mk[cpu]", 2]


def test_markdown(written):
    markdown = written[1]
    for text in (
        "# majority-kernels benchmark: tiny",
        "## Linear",
        "## Conv2d",
        "## Kernels",
        "| mk[cpu] |",
        "| 8x16x16 | 4 | naive |",
        "| combine | 2x16x16 | mk[cpu] |",
    ):
        assert text in markdown
    assert "× compiled" not in markdown and "peak MiB" not in markdown  # columns without values are left out


def test_gpu_sections_skipped_with_a_note(written):
    report, markdown = written
    skipped = report["meta"]["skipped_sections"]
    assert set(skipped) == {"crossover", "conv-fused"} and not set(skipped) & set(report)
    assert "- not run: conv-fused: it times Triton kernels on a CUDA GPU, and this run is on cpu" in markdown


@pytest.mark.parametrize("sections", ["conv-fused", "linear,conv-fused", "crossover"])
def test_gpu_sections_asked_for_are_refused_on_cpu(sections, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--device", "cpu", "--only", sections])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    section = sections.split(",")[-1]
    assert f"argument --only: section {section} cannot run here: it times Triton kernels on a CUDA GPU" in error


def test_compiled_baseline(tmp_path):
    assert main(["bench", *TINY, "--expansion", "2", "--only", "linear,kernels", "--output", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.json")
    assert path.name == bench.default_name(torch.device("cpu"), torch.float32) + ".json"
    report = json.loads(path.read_text())
    assert set(report) == {"meta", "linear", "kernels"}
    linear = {row["variant"]: row for row in report["linear"]}
    assert set(linear) == LAYER_VARIANTS | {"naive+compile"}
    assert linear["naive+compile"]["ratio_compiled"] == 1.0 and _positive(linear["mk[cpu]"]["ratio_compiled"])
    assert linear["naive+compile"]["saved_bytes"] > linear["mk[cpu]"]["saved_bytes"]
    assert "naive+compile" in {row["variant"] for row in report["kernels"] if row["op"] == "combine"}


def test_bfloat16_autocast(tmp_path):
    assert (
        main(
            [
                *"bench".split(),
                *TINY,
                *"--expansion 2 --dtype bf16 --no-compile --only linear --output".split(),
                str(tmp_path / "bf16"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "bf16.json").read_text())
    assert report["meta"]["dtype"] == "bfloat16" and report["meta"]["autocast"]
    mk = next(row for row in report["linear"] if row["variant"] == "mk[cpu]")
    assert mk["saved_bytes"] == 8 * 16 * 2 + 16 * 16 * 2 + 8  # bf16 input and W_eff, and the seed


def test_floor_bytes():
    n, e = 1000, 4
    assert bench.floor_extra_bytes(n, e, torch.float32) == 2 * e * n * 4 + 2 * n * 4
    assert bench.floor_extra_bytes(n, e, torch.bfloat16) == 2 * e * n * 4 + 2 * n * 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--expansion", "0"], "expansion must be >= 1"),
        (["--expansion", "2,two"], "expansion must be an integer >= 1, got 'two'"),
        (["--dtype", "float8"], "invalid choice: 'float8'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--shapes", "8x16"], "bad shape '8x16'"),
        (["--conv-shapes", "2x3x4x6x6"], "BxCINxCOUTxHxWxKERNEL"),
        (["--backend", "nonexistent"], "unknown majority-kernels backend 'nonexistent'"),
        (["--only", "attention"], "unknown section(s) ['attention']"),
        (["--repeats", "0"], "must be >= 1"),
    ],
)
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "majority-kernels bench: error:" in error and message in error


def test_backend_that_cannot_run(monkeypatch, capsys):
    unrunnable = dataclasses.replace(
        backends.BACKENDS["reference"], name="unrunnable", unavailable=lambda device: "it never runs"
    )
    monkeypatch.setitem(backends.BACKENDS, "unrunnable", unrunnable)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--backend", "unrunnable"])
    assert exit_info.value.code == 2
    assert "cannot run here: it never runs" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "cuda requested but torch sees no CUDA device" in capsys.readouterr().err


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "majority_kernels", "bench", "--help"], capture_output=True, text=True, check=True
    )
    assert "--conv-shapes" in result.stdout and "--no-compile" in result.stdout


def test_resolve_output(tmp_path):
    assert bench.resolve_output(None, "x") == bench.report.RESULTS_DIR / "x"
    assert bench.resolve_output(str(tmp_path), "x") == tmp_path / "x"
    assert bench.resolve_output(str(tmp_path / "new") + "/", "x") == tmp_path / "new" / "x"
    assert bench.resolve_output(str(tmp_path / "run.md"), "x") == tmp_path / "run"
