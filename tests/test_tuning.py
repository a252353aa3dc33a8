"""Tuning tables (majority_kernels.tuning) without a GPU: the format's round trip and its errors, where tables are
read from and in which order, lookup by GPU name and majority-kernels version, the one-time note for a GPU without a
table, the `tune` command's refusal where there is no GPU, and that the dispatch takes its values from the table
of the GPU it runs on (the GPU's name monkeypatched)."""

import dataclasses
import json
import warnings

import pytest
import torch
from helpers import ROOT, assert_matches_reference

import majority_kernels as mk
from majority_kernels import backends, cli, cuda_ops, paths, reference, tune, tuning

GPU = "Fake GPU 9000"
MEASURED = tuning.Thresholds(
    cuda_fused_max_rows=3, triton_fused_forward_max_m=5, triton_fused_wgrad_max_m=7, combine_block=64, scatter_block=32
)
needs_triton = pytest.mark.skipif(
    backends.BACKENDS["triton"].unavailable(torch.device("cpu")) is not None,
    reason="the Triton backend cannot run on CPU tensors here",
)


def _table(gpu=GPU, version=mk.__version__, thresholds=MEASURED):
    return tuning.Table(
        gpu=gpu,
        majority_kernels=version,
        thresholds=thresholds,
        torch="2.x",
        triton="3.x",
        date="2026-01-01T00:00:00+00:00",
        quick=True,
        measurements={"blocks": [{"block": 64}]},
    )


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """An empty user folder (MK_TUNING_DIR) and shipped folder; the real ones are read again afterwards."""
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setenv(tuning.TUNING_DIR_VARIABLE, str(user))
    monkeypatch.setattr(tuning, "SHIPPED_DIR", shipped)
    tuning.reload()
    yield user, shipped
    monkeypatch.undo()
    tuning.reload()


@pytest.fixture
def on_gpu(monkeypatch):
    """Every device looks like the GPU named GPU to the lookup."""
    monkeypatch.setattr(tuning, "device_gpu", lambda device: GPU)


def _unmeasured_notes(record):
    return [w for w in record if "no tuning table" in str(w.message)]


def test_table_round_trip(tmp_path):
    table = _table()
    path = tuning.write(table, tmp_path)
    assert path.name == "fake-gpu-9000-mk" + mk.__version__ + ".json"
    assert tuning.read(path) == table
    assert json.loads(path.read_text())["thresholds"] == dataclasses.asdict(MEASURED)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda data: data.update(format=2), "format must be 1"),
        (lambda data: data.pop("gpu"), "field 'gpu'"),
        (lambda data: data["thresholds"].pop("scatter_block"), "exactly the keys"),
        (lambda data: data["thresholds"].update(combine_block=1000), "combine_block must be a power of two"),
        (lambda data: data["thresholds"].update(cuda_fused_max_rows=-1), "cuda_fused_max_rows must be an integer"),
        (lambda data: data["thresholds"].update(triton_fused_wgrad_max_m="64"), "triton_fused_wgrad_max_m must be"),
        (lambda data: data.update(measurements=[1]), "'measurements' must be an object"),
    ],
)
def test_bad_tables_are_refused_naming_the_field(tmp_path, change, message):
    data = _table().to_json()
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        tuning.read(path)
    assert str(path) in str(error.value)


def test_user_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.TUNING_DIR_VARIABLE, str(tmp_path / "mine"))
    assert tuning.user_dir() == tmp_path / "mine"
    monkeypatch.delenv(tuning.TUNING_DIR_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert tuning.user_dir() == tmp_path / "cache" / "majority-kernels" / "tuning"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.user_dir() == tmp_path / "home" / ".cache" / "majority-kernels" / "tuning"
    assert tuning.search_dirs()[1] == tuning.SHIPPED_DIR


def test_lookup_by_gpu_name_user_folder_first(folders, on_gpu):
    user, shipped = folders
    shipped_values = dataclasses.replace(MEASURED, combine_block=128)
    tuning.write(_table(thresholds=shipped_values), shipped)
    tuning.write(_table(gpu="Another GPU", thresholds=tuning.DEFAULTS), shipped)
    tuning.reload()
    assert tuning.for_device(torch.device("cuda")) == shipped_values  # shipped only
    tuning.write(_table(), user)
    tuning.reload()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a measured GPU: no note
        assert tuning.for_device(torch.device("cuda", 0)) == MEASURED  # the user's wins
    assert tuning.table_for("Another GPU").thresholds == tuning.DEFAULTS
    assert tuning.table_for("Unknown GPU") is None


def test_shipped_folder_is_package_data():
    assert tuning.SHIPPED_DIR == ROOT / "majority_kernels" / "tuning_tables" and tuning.SHIPPED_DIR.is_dir()
    assert '"tuning_tables/*.json"' in (ROOT / "pyproject.toml").read_text()  # installed with the package
    for path in tuning.SHIPPED_DIR.glob("*.json"):  # every shipped table is valid, and of this version
        assert tuning.read(path).majority_kernels == mk.__version__, path


def test_missing_table_falls_back_with_one_note(folders, on_gpu):
    with pytest.warns(RuntimeWarning, match="no tuning table for GPU 'Fake GPU 9000'") as record:
        assert tuning.for_device(torch.device("cuda")) == tuning.DEFAULTS
    note = str(_unmeasured_notes(record)[0].message)
    assert "unmeasured defaults" in note and "cuda_fused_max_rows=16" in note and "tune --device cuda" in note
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert tuning.for_device(torch.device("cuda")) == tuning.DEFAULTS


def test_devices_other_than_gpus_take_the_defaults_silently(folders):
    assert tuning.device_gpu(torch.device("cpu")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuning.for_device(torch.device("cpu")) == tuning.DEFAULTS


def test_table_of_another_version_is_ignored_and_named(folders, on_gpu):
    user, _ = folders
    path = tuning.write(_table(version="0.0.1"), user)
    tuning.reload()
    with pytest.warns(RuntimeWarning, match="tables of other versions ignored: 0.0.1") as record:
        assert tuning.for_device(torch.device("cuda")) == tuning.DEFAULTS
    assert str(path) in str(_unmeasured_notes(record)[0].message)


def test_invalid_file_is_skipped_with_a_warning(folders, on_gpu):
    user, _ = folders
    tuning.write(_table(), user)
    (user / "broken.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="ignoring .*broken.json: not a valid tuning table"):
        tuning.reload()
    assert tuning.for_device(torch.device("cuda")) == MEASURED


def test_last_paying_size():
    assert tune.last_paying([1, 16, 64, 256], [0.5, 0.9, 1.1, 0.8]) == 16  # stops at the first loss
    assert tune.last_paying([1, 16], [1.2, 0.5]) == 0
    assert tune.last_paying([1, 16], [0.5, 0.7]) == 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("argv", [["tune"], ["tune", "--device", "cuda", "--quick"]])
def test_tune_refuses_without_a_gpu(capsys, argv):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "needs a CUDA GPU" in captured.err


# ---- the dispatch reads the table ----------------------------------------------------------------------------


@pytest.fixture
def measured(folders, on_gpu):
    tuning.write(_table(), folders[0])
    tuning.reload()


def test_cuda_backend_path_choice_reads_the_table(measured, monkeypatch):
    monkeypatch.delenv(paths.FORWARD_VARIABLE, raising=False)
    f32 = torch.float32
    assert cuda_ops.linear_path(MEASURED.cuda_fused_max_rows, f32, f32, torch.device("cuda"), 4) == "fused"
    assert cuda_ops.linear_path(MEASURED.cuda_fused_max_rows + 1, f32, f32, torch.device("cuda"), 4) == "combine"


@needs_triton
def test_triton_path_choice_reads_the_table(measured, monkeypatch):
    from majority_kernels import triton_ops

    monkeypatch.delenv("MK_LINEAR_PATH", raising=False)
    monkeypatch.delenv("MK_WGRAD_PATH", raising=False)
    f32, device = torch.float32, torch.device("cuda")
    assert triton_ops.linear_paths(MEASURED.triton_fused_forward_max_m, f32, device, 4) == ("fused", "fused")
    assert triton_ops.linear_paths(MEASURED.triton_fused_forward_max_m + 1, f32, device, 4) == ("combine", "fused")
    assert triton_ops.linear_paths(MEASURED.triton_fused_wgrad_max_m + 1, f32, device, 4) == ("combine", "scatter")


def _recording(launcher, name, launched):
    """launcher, recording (name, its last argument: the block) per call."""

    def launch(*args):
        launched.append((name, args[-1]))
        launcher(*args)

    return launch


@needs_triton
def test_triton_combine_and_scatter_launch_with_the_tables_block(measured, monkeypatch, generator):
    from majority_kernels.triton_ops import mixing

    launched = []
    for module, name in ((mixing.combine_kernels, "combine"), (mixing.scatter_kernels, "scatter")):
        monkeypatch.setattr(module, name, _recording(getattr(module, name), name, launched))
    weight = torch.randn(3, 5, 37, generator=generator)  # several programs of the table's small blocks
    grad = torch.randn(5, 37, generator=generator)
    with mk.use_backend("triton"):
        combined = mk.functional.combine(weight, 9, 0)
        scattered = mk.functional.scatter(grad, 9, 0, 3)
    assert launched == [("combine", MEASURED.combine_block), ("scatter", MEASURED.scatter_block)]
    assert_matches_reference(combined, reference.combine(weight.double(), 9, 0))
    assert_matches_reference(scattered, reference.scatter(grad.double(), 9, 0, 3))


@needs_triton
def test_compiled_layer_traces_the_lookup(measured, monkeypatch):
    """torch.compile(fullgraph=True) traces the table lookup (a graph break would be an error) and builds the
    table's path into the graph: the fused GEMM up to triton_fused_forward_max_m rows, combine beyond."""
    monkeypatch.delenv("MK_LINEAR_PATH", raising=False)
    monkeypatch.delenv("MK_WGRAD_PATH", raising=False)
    graphs = []

    def keep_graph(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    layer = mk.MKLinear(8, 4, expansion=2).train()
    ops_in_graph = []
    with mk.use_backend("triton"):
        for rows in (MEASURED.triton_fused_forward_max_m, MEASURED.triton_fused_forward_max_m + 1):
            torch._dynamo.reset()
            x = torch.randn(rows, 8)
            out = torch.compile(layer, fullgraph=True, dynamic=False, backend=keep_graph)(x)
            torch.testing.assert_close(out, layer(x))
            # The autograd.Function's forward is a subgraph of the captured one.
            ops_in_graph.append(
                {
                    str(node.target)
                    for module in graphs[-1].modules()
                    if isinstance(module, torch.fx.GraphModule)
                    for node in module.graph.nodes
                    if node.op == "call_function"
                }
            )
    torch._dynamo.reset()
    fused, combined = ops_in_graph
    assert any("mixed_matmul" in op for op in fused) and not any("combine" in op for op in fused), fused
    assert any("combine" in op for op in combined) and not any("mixed_matmul" in op for op in combined), combined


def test_lookup_traces_under_compile(measured):
    """The GPU branch of the lookup, uncached and cached, traces with fullgraph=True to the table's constant."""

    def scaled(x):
        return x * tuning.for_device(torch.device("cuda", 0)).combine_block

    for _ in ("uncached", "cached"):
        torch._dynamo.reset()
        assert torch.compile(scaled, fullgraph=True)(torch.ones(2)).tolist() == [MEASURED.combine_block] * 2
        tuning.for_device(torch.device("cuda", 0))  # eager: fills the cache for the second round
    torch._dynamo.reset()


@needs_triton
def test_tune_measures_and_writes_a_table_on_the_interpreter(folders, on_gpu):
    """The measuring code end to end on a tiny layer in Triton's interpreter (its timings mean nothing here): a
    valid table, in force once written."""
    plan = tune.Plan("test", triton_ms=(1, 16), cuda_rows=(1,), blocks=(16, 32), repeats=1, warmup=0)
    workload = tune.Workload(n=8, k=16, expansion=2, dtype=torch.float32)
    lines = []
    table = tune.run(plan, torch.device("cpu"), workload, log=lines.append)
    assert table.gpu == GPU and table.majority_kernels == mk.__version__ and table.quick
    measured = table.thresholds
    assert measured.triton_fused_forward_max_m in (0, 1, 16) and measured.triton_fused_wgrad_max_m in (0, 1, 16)
    assert measured.combine_block in plan.blocks and measured.scatter_block in plan.blocks
    # No CUDA kernels on CPU tensors: not measured, the default kept, and said so.
    assert measured.cuda_fused_max_rows == tuning.DEFAULTS.cuda_fused_max_rows
    assert "not_measured" in table.measurements["cuda_small_m"] and any("not measured" in line for line in lines)
    assert {row["M"] for row in table.measurements["triton_crossover"]} <= {1, 16}
    assert len(table.measurements["blocks"]) == 2 * len(plan.blocks)
    path = tune.write(table, None)
    assert path.parent == folders[0] and tuning.read(path) == table
    assert tuning.for_device(torch.device("cuda")) == measured


@pytest.mark.gpu
def test_gpu_lookup_traces_with_the_real_device_properties():
    """On a GPU, torch.compile folds the device's properties to constants: the uncached lookup traces with
    fullgraph=True (the GPU's table, or the defaults where it has none)."""
    tuning.reload()  # nothing cached
    device = torch.device("cuda", torch.cuda.current_device())

    def blocked(x):
        return x * tuning.for_device(device).combine_block

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note for a GPU without a table is given by the eager call below
        traced = torch.compile(blocked, fullgraph=True)(torch.ones(2, device=device))
    torch._dynamo.reset()
    assert traced.tolist() == [tuning.for_device(device).combine_block] * 2
