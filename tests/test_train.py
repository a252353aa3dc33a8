"""`majority-kernels train`: the data, the command's arguments, and tiny runs end to end (needs scikit-learn and
matplotlib, the `train` extra)."""

import collections
import json
import subprocess
import sys

import pytest
import torch
from helpers import own_task_config
from torch import nn
from torch.utils.data import TensorDataset

from majority_kernels import train
from majority_kernels.cli import main
from majority_kernels.train import data

TINY = [*("--epochs 1 --seeds 2 --train-samples 80 --test-samples 32 --no-progress --lr 1e-3,1e-2").split()]


@pytest.fixture(scope="module")
def digits() -> train.Task:
    return train.load_digits()


def test_digits_shapes(digits):
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10 and digits.kind == "classification"
    image, label = digits.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.int64


def test_digits_split_is_a_stratified_partition(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train_images = digits.train.tensors[0]
    assert abs(train_images.mean().item()) < 1e-5 and abs(train_images.std().item() - 1) < 1e-5
    # Undo the standardisation (raw pixels are the integers 0..16, both present in the training set): train and
    # test together hold every sample of the data set exactly once.
    low, high = train_images.min(), train_images.max()
    split_samples = collections.Counter(
        (tuple(torch.round((image - low) / (high - low) * 16).int().flatten().tolist()), int(label))
        for split in (digits.train, digits.test)
        for image, label in zip(*split.tensors)
    )
    all_samples = collections.Counter(
        (tuple(image.astype(int).flatten().tolist()), int(label)) for image, label in zip(bunch.images, bunch.target)
    )
    assert split_samples == all_samples
    test_counts = torch.bincount(digits.test.tensors[1], minlength=10)
    assert (test_counts - torch.bincount(torch.as_tensor(bunch.target)) * 0.2).abs().max() <= 1  # stratified


def test_digits_split_is_deterministic(digits):
    again, other = train.load_digits(), train.load_digits(split_seed=1)
    assert torch.equal(again.test.tensors[0], digits.test.tensors[0])
    assert torch.equal(again.train.tensors[1], digits.train.tensors[1])
    assert not torch.equal(other.test.tensors[1], digits.test.tensors[1])


@pytest.fixture(scope="module")
def docs() -> train.Task:
    return train.load_python_docs(context=64)


def test_python_docs_windows(docs):
    assert docs.kind == "language_model" and docs.input_shape == (64,)
    assert 60 <= docs.num_classes <= 200 and len(docs.train) > 9 * len(docs.test) > 0
    inputs, targets = docs.train[3]
    assert inputs.shape == targets.shape == (64,)
    assert torch.equal(inputs[1:], targets[:-1])  # the target is the next character
    assert torch.equal(docs.train[4][0][0:1], targets[-1:])  # windows follow each other without overlap
    assert 0 <= int(inputs.min()) and int(inputs.max()) < docs.num_classes
    with pytest.raises(IndexError):
        docs.train[len(docs.train)]


def test_python_docs_split_is_contiguous_and_deterministic(docs):
    text = data.python_docs_text()
    train_tokens, test_tokens = docs.train.tokens, docs.test.tokens
    assert len(train_tokens) + len(test_tokens) == len(text)
    assert len(test_tokens) == len(text) - int(len(text) * 0.9)
    vocabulary = sorted(set(text))
    decoded = "".join(vocabulary[i] for i in torch.cat([train_tokens, test_tokens]).tolist())
    assert decoded == text
    assert torch.equal(train.load_python_docs(context=64).test.tokens, test_tokens)


def test_custom_task_and_limit():
    inputs, labels = torch.randn(10, 3, 4, 4), torch.arange(10) % 3
    task = train.custom_task(TensorDataset(inputs, labels), TensorDataset(inputs[:4], labels[:4]), num_classes=3)
    assert task.input_shape == (3, 4, 4) and task.name == "custom"
    limited = data.limit(task, 6, None)
    assert len(limited.train) == 6 and limited.test is task.test
    with pytest.raises(ValueError, match="num_classes"):
        train.custom_task(task.train, task.test, num_classes=1)
    with pytest.raises(ValueError, match="kind"):
        train.custom_task(task.train, task.test, num_classes=3, kind="regression")


def test_task_factory(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\nfrom majority_kernels.train import custom_task\n"
        "def make():\n"
        "    x, y = torch.randn(40, 5), torch.arange(40) % 2\n"
        "    return custom_task(TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:]), 2, name='mine')\n"
        "not_callable = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert data.task_factory("digits") is train.load_digits
    assert data.task_factory("my_data:make")().name == "mine"
    for spec, message in [
        ("nope", "neither"),
        ("my_data:", "neither"),
        ("no_such_module_x:make", "cannot import"),
        ("my_data:not_callable", "no callable"),
    ]:
        with pytest.raises(ValueError, match=message):
            data.task_factory(spec)


@pytest.mark.parametrize(
    "arguments, named",
    [
        (["--seeds", "0"], "--seeds"),
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "two"], "--epochs"),
        (["--expansion", "0"], "--expansion"),
        (["--expansion", "2,x"], "--expansion"),
        (["--init", "replicate,zeros"], "--init"),
        (["--lr", "0"], "--lr"),
        (["--lr", "fast"], "--lr"),
        (["--lr", "1e-3,inf"], "--lr"),
        (["--weight-decay", "-0.1"], "--weight-decay"),
        (["--batch-size", "0"], "--batch-size"),
        (["--optimizer", "adam"], "--optimizer"),
        (["--label-noise", "1"], "--label-noise"),
        (["--validation-fraction", "0"], "--validation-fraction"),
        (["--patience", "0"], "--patience"),
        (["--tune-seeds", "0"], "--tune-seeds"),
        (["--preset", "lm", "--label-noise", "0.2"], "--label-noise"),
        (["--train-samples", "0"], "--train-samples"),
        (["--preset", "huge"], "--preset"),
        (["--model", "rnn"], "--model"),
        (["--device", "tpu"], "--device"),
        (["--dataset", "mnist"], "--dataset"),
        (["--dataset", "no_such_module_x:make"], "--dataset"),
        (["--dataset", "python-docs"], "--model"),
        (["--dataset", "digits", "--model", "transformer"], "--model"),
        (["--backend", "nope"], "--backend"),
        (["--backend", "cpu,reference"], "--backend"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(arguments, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *arguments])
    assert exit_info.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--device", "cuda"])
    assert "argument --device: cuda requested" in capsys.readouterr().err


def test_cnn_end_to_end(tmp_path, capsys):
    output = tmp_path / "cnn"
    assert (
        main(
            [
                *"train --preset cnn --expansion 2 --init replicate,independent".split(),
                *TINY,
                *"--output".split(),
                str(output),
            ]
        )
        == 0
    )
    report = json.loads((output / "results.json").read_text())
    meta = report["meta"]
    assert (meta["train_samples"], meta["validation_samples"], meta["test_samples"]) == (64, 16, 32)
    assert meta["backend"] == "cpu"
    rows = report["summary"]
    assert [row["variant"] for row in rows] == ["dense", "MK e=2 replicate", "MK e=2 independent", "wide ×2"]
    for row in rows:
        assert row["seeds"] == 2 and row["deployed_matches"] and row["lr"] in (1e-3, 1e-2)
        assert 0 <= row["test_accuracy"] <= 1 and row["epoch_time_s"] > 0 and row["deployed_inference_time_s"] > 0
    for row in rows[:3]:
        assert row["deployed_parameters"] == rows[0]["deployed_parameters"]  # deployed at the dense model's size
    assert rows[1]["train_parameters"] > rows[0]["train_parameters"]
    assert rows[3]["deployed_parameters"] == rows[3]["train_parameters"] > rows[0]["train_parameters"]
    assert rows[0]["test_accuracy_delta"] == 0 and rows[0]["epoch_time_ratio"] == 1
    assert len(report["runs"]) == 8 and all(len(run["epochs"]) == 1 for run in report["runs"])
    assert len(report["tuning"]) == 8 and len(report["gain"]) == 2
    markdown = (output / "results.md").read_text()
    assert "| MK e=2 independent |" in markdown and "![curves](curves.png)" in markdown
    assert "share of the wide gain" in markdown
    for name in ("curves.png", "test_accuracy_vs_expansion.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| dense |" in capsys.readouterr().out  # the table in the terminal


def test_sgd_label_noise_and_early_stopping(tmp_path):
    output = tmp_path / "noisy"
    assert (
        main(
            [
                *(
                    "train --preset label-noise --optimizer sgd --patience 1 --epochs 4 --expansion 2 "
                    "--no-wide --seeds 1 --train-samples 100 --test-samples 20 --lr 0.05 "
                    "--no-progress --no-plots --output"
                ).split(),
                str(output),
            ]
        )
        == 0
    )
    report = json.loads((output / "results.json").read_text())
    config = report["meta"]["config"]
    assert config["optimizer"] == "sgd" and config["label_noise"] == 0.2 and not config["wide"]
    assert [row["variant"] for row in report["summary"]] == ["dense", "MK e=2 replicate"] and not report["gain"]
    assert "20% of the training labels noisy" in report["meta"]["task_description"]
    for run in report["runs"]:
        assert 1 <= run["kept_epoch"] <= len(run["epochs"]) <= 4
        best = max(run["epochs"], key=lambda epoch: (epoch["validation_accuracy"], -epoch["validation_loss"]))
        assert run["validation_accuracy"] == best["validation_accuracy"]


def test_language_model_end_to_end(tmp_path, capsys):
    output = tmp_path / "lm"
    assert (
        main(
            [
                *(
                    "train --preset lm --expansion 2 --init replicate --epochs 1 --seeds 1 "
                    "--train-samples 5 --test-samples 2 --batch-size 2 --lr 1e-3 --no-progress "
                    "--no-plots --output"
                ).split(),
                str(output),
            ]
        )
        == 0
    )
    report = json.loads((output / "results.json").read_text())
    assert sorted(path.name for path in output.iterdir()) == ["results.json", "results.md"]
    dense, mk_row, wide = report["summary"]
    assert mk_row["deployed_matches"] and mk_row["test_perplexity"] > 1 and wide["variant"] == "wide ×2"
    assert "test perplexity" in capsys.readouterr().out


def test_python_api_with_own_data_and_model(tmp_path):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(48, 6, generator=generator)
    labels = (inputs[:, 0] > 0).long()
    task = train.custom_task(TensorDataset(inputs[:32], labels[:32]), TensorDataset(inputs[32:], labels[32:]), 2)
    config = own_task_config(expansions=(3,), epochs=2, lrs=(1e-2,), wide=False)
    report = train.run(
        config, task=task, build_model=lambda task, width: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    )
    assert [row["variant"] for row in report["summary"]] == ["dense", "MK e=3 replicate"]
    assert report["summary"][1]["train_parameters"] == 3 * (6 * 8 + 8 * 2) + 8 + 2
    paths = train.write(report, tmp_path, plots=False)
    assert [path.name for path in paths] == ["results.json", "results.md"]


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "majority_kernels", "train", "--help"], capture_output=True, text=True, check=True
    )
    assert "--expansion" in result.stdout and "--dataset" in result.stdout
