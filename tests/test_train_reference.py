"""`majority-kernels train`'s fair comparison: the wide dense reference, the validation split, label noise, the
share of the wide model's gain, and that the test data is read once per final run (needs the `train` extra)."""

import math

import pytest
import torch
from helpers import own_task_config
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from majority_kernels import train
from majority_kernels.train import data, experiment, models, report


@pytest.fixture(scope="module")
def digits() -> train.Task:
    return train.load_digits()


@pytest.fixture(scope="module")
def docs() -> train.Task:
    return train.load_python_docs(context=64)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_wide_model_has_about_factor_times_the_parameters(name, factor, digits, docs):
    task = docs if name == "transformer" else digits
    build = models.model_builder(name, task)
    width = models.wide_width(build, task, factor)
    dense, wide = models.parameter_count(build, task), models.parameter_count(build, task, width)
    assert abs(wide / (factor * dense) - 1) < 0.10
    # Counted on real tensors too, and the wide model keeps the depth: as many weight layers.
    model = build(task, width)
    assert sum(p.numel() for p in model.parameters()) == wide
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(layers) == len([m for m in build(task, 1.0).modules() if isinstance(m, (nn.Linear, nn.Conv2d))])


def test_wide_width_rejects_a_builder_that_ignores_the_width(digits):
    with pytest.raises(ValueError, match="does not grow"):
        models.wide_width(lambda task, width: nn.Linear(64, 10), digits, 4)


def test_validation_split_is_carved_from_training_data_and_disjoint_from_test(digits):
    task = data.with_validation(digits, 0.2)
    fit_index, validation_index = task.train.indices, task.validation.indices
    assert task.train.dataset is digits.train and task.validation.dataset is digits.train
    assert not set(fit_index) & set(validation_index)
    assert sorted(fit_index + validation_index) == list(range(len(digits.train)))
    assert task.test is digits.test  # and train/test are disjoint (tests/test_train.py)
    labels = digits.train.tensors[1]
    counts, validation_counts = torch.bincount(labels), torch.bincount(labels[validation_index], minlength=10)
    assert (validation_counts - counts * 0.2).abs().max() <= 0.5  # stratified
    assert data.with_validation(digits, 0.2).validation.indices == validation_index  # deterministic
    with pytest.raises(ValueError, match="fraction"):
        data.with_validation(digits, 1.0)


def test_a_task_keeps_its_own_validation_split():
    inputs, labels = torch.randn(30, 4), torch.arange(30) % 2
    own = TensorDataset(inputs[:6], labels[:6])
    task = train.custom_task(TensorDataset(inputs[6:], labels[6:]), own, 2, validation=own)
    config = own_task_config(model="mlp")
    assert experiment.prepare_task(config, task).validation is own
    assert len(experiment.prepare_task(config, train.custom_task(task.train, own, 2)).validation) == 4


def test_text_validation_split_is_the_end_of_the_training_text(docs):
    task = data.with_validation(docs, 0.1)
    fit_index, validation_index = task.train.indices, task.validation.indices
    assert fit_index == list(range(len(fit_index)))
    assert validation_index == list(range(len(fit_index), len(docs.train)))
    assert task.test is docs.test  # the test text comes after all of the training text


def test_label_noise(digits):
    noisy = data.with_label_noise(digits, 0.2, seed=0)
    clean_labels = digits.train.tensors[1]
    noisy_labels = torch.stack([noisy.train[i][1] for i in range(len(noisy.train))])
    changed = noisy_labels != clean_labels
    assert changed.sum().item() == round(0.2 * len(clean_labels))  # exactly 20%, each to another class
    assert 0 <= noisy_labels.min() and noisy_labels.max() < 10
    assert torch.equal(noisy.train[5][0], digits.train[5][0])  # inputs untouched
    assert noisy.test is digits.test  # test labels clean
    again = data.with_label_noise(digits, 0.2, seed=0)
    assert torch.equal(again.train.labels, noisy.train.labels)
    assert not torch.equal(data.with_label_noise(digits, 0.2, seed=1).train.labels, noisy.train.labels)
    assert data.with_label_noise(digits, 0.0) is digits
    with pytest.raises(ValueError, match="classification"):
        data.with_label_noise(train.load_python_docs(context=64), 0.2)


def test_tabular_data():
    task = train.load_tabular("breast-cancer")
    assert task.input_shape == (30,) and task.num_classes == 2 and len(task.train) + len(task.test) == 569
    features = task.train.tensors[0]
    assert features.mean(0).abs().max() < 1e-4 and (features.std(0) - 1).abs().max() < 1e-4


def test_share_of_gain_and_its_interval():
    wide = [1.0, 1.2, 0.8, 1.1, 0.9]
    exact = report.share_interval([0.5 * gain for gain in wide], wide)
    assert exact["defined"] and exact["share"] == pytest.approx(0.5)
    assert exact["low"] == pytest.approx(0.5) and exact["high"] == pytest.approx(0.5)  # no noise: a point
    noisy = report.share_interval([0.6, 0.4, 0.5, 0.7, 0.3], wide)
    assert noisy["low"] < noisy["share"] < noisy["high"]
    undefined = report.share_interval([0.1, 0.2, 0.0, -0.1, 0.1], [0.5, -0.4, 0.3, -0.2, 0.1])
    assert not undefined["defined"] and undefined["low"] is None
    interval = report.mean_interval([1.0, 2.0, 3.0])
    assert interval["mean"] == 2 and interval["high"] - 2 == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)


class CountingDataset(Dataset):
    """Counts the reads of its items."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.reads = dataset, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.reads += 1
        return self.dataset[index]


def test_each_variant_picks_its_hyperparameters_and_reads_test_once_per_final_run():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(60, 6, generator=generator)
    labels = (inputs[:, 0] > 0).long()
    test_data = CountingDataset(TensorDataset(inputs[40:], labels[40:]))
    task = train.custom_task(TensorDataset(inputs[:40], labels[:40]), test_data, 2)
    config = own_task_config(
        seeds=3, epochs=2, lrs=(1e-3, 1e-1), weight_decays=(0.0, 0.1), tune_seeds=2, patience=1, plots=False
    )
    result = train.run(
        config,
        task=task,
        build_model=lambda task, width: nn.Sequential(
            nn.Linear(6, round(8 * width)), nn.Tanh(), nn.Linear(round(8 * width), 2)
        ),
    )
    assert [row["variant"] for row in result["summary"]] == ["dense", "MK e=2 replicate", "wide ×2"]
    assert len(result["runs"]) == 3 * 3 and test_data.reads == 9 * len(test_data)
    for row in result["summary"]:
        entries = [entry for entry in result["tuning"] if entry["variant"] == row["variant"]]
        assert len(entries) == 4 and sum(entry["chosen"] for entry in entries) == 1
        best = max(entries, key=lambda entry: entry["validation_score"])
        assert best["chosen"] and (row["lr"], row["weight_decay"]) == (best["lr"], best["weight_decay"])
        assert 1 <= row["kept_epoch"] <= 2
    wide_row = result["summary"][2]
    assert abs(wide_row["train_parameters"] / (2 * result["summary"][0]["train_parameters"]) - 1) < 0.1
    (gain,) = result["gain"]
    assert gain["variant"] == "MK e=2 replicate" and gain["wide"] == "wide ×2" and gain["seeds"] == 3
    markdown = report.to_markdown(result)
    assert "share of the wide gain" in markdown and "Hyperparameter search" in markdown
