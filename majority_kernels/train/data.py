"""The data of `majority-kernels train`: built-in tasks on real data that ships with installed packages (nothing is
downloaded), and how a user's own `torch.utils.data.Dataset` plugs in.

    task = custom_task(train_dataset, test_dataset, num_classes=10)   # your data, any (input, target) Dataset
    run(config, task=task)                                            # majority_kernels.train.run

From the command line, `--dataset my_package.my_module:make_task` calls `make_task()`, which returns such a Task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import platform
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

CLASSIFICATION = "classification"
LANGUAGE_MODEL = "language_model"


@dataclass(frozen=True)
class Task:
    """A supervised task: datasets of (input, target) pairs and what a model needs to know about them.

    kind "classification": a target is a class index in [0, num_classes). kind "language_model": input and target
    are token sequences of the same length, the target shifted by one, and num_classes is the vocabulary size.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # one sample's input, e.g. (1, 8, 8) for an image, (context,) for text
    kind: str = CLASSIFICATION
    description: str = ""
    validation: Optional[Dataset] = None  # carved out of the training data by with_validation


def custom_task(
    train: Dataset,
    test: Dataset,
    num_classes: int,
    *,
    name: str = "custom",
    kind: str = CLASSIFICATION,
    description: str = "",
    validation: Optional[Dataset] = None,
) -> Task:
    """A Task from your own datasets: each item an (input tensor, target) pair; the input shape is read from the
    first training item. The built-in models fit inputs of shape (C, H, W) ("cnn") or any shape ("mlp", which
    flattens it); for other models pass build_model to `run`. Without a validation dataset, the experiment carves
    one out of train."""
    if kind not in (CLASSIFICATION, LANGUAGE_MODEL):
        raise ValueError(f"kind must be {CLASSIFICATION!r} or {LANGUAGE_MODEL!r}, got {kind!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"the train and test datasets must not be empty (sizes {len(train)}, {len(test)})")
    sample_input = train[0][0]
    if not isinstance(sample_input, Tensor):
        raise TypeError(f"dataset items must be (input tensor, target) pairs, got input {type(sample_input).__name__}")
    return Task(name, train, test, num_classes, tuple(sample_input.shape), kind, description, validation)


def load_digits(split_seed: int = 0, test_fraction: float = 0.2) -> Task:
    """scikit-learn's handwritten digits (1797 images of 8x8 pixels, 10 classes, shipped inside scikit-learn):
    a stratified train/test split fixed by split_seed, pixels standardised with the training set's mean and
    standard deviation (one scalar each: border pixels are constant, so per-pixel statistics would divide by 0)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the digits data ships with scikit-learn: pip install 'majority-kernels[train]'") from error
    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_index, test_index = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_fraction, stratify=bunch.target, random_state=split_seed
    )
    train_index, test_index = torch.as_tensor(train_index), torch.as_tensor(test_index)
    mean, std = images[train_index].mean(), images[train_index].std()
    images = (images - mean) / std
    return Task(
        "digits",
        TensorDataset(images[train_index], labels[train_index]),
        TensorDataset(images[test_index], labels[test_index]),
        num_classes=10,
        input_shape=(1, 8, 8),
        description=f"scikit-learn digits, 8x8 images, stratified split (seed {split_seed}): "
        f"{len(train_index)} train / {len(test_index)} test",
    )


def load_tabular(name: str, split_seed: int = 0, test_fraction: float = 0.2) -> Task:
    """One of scikit-learn's bundled tables ("breast-cancer": 569 samples, 30 features, 2 classes; "wine": 178
    samples, 13 features, 3 classes): a stratified train/test split fixed by split_seed, each feature standardised
    with the training set's mean and standard deviation."""
    try:
        from sklearn import datasets
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the tabular data ships with scikit-learn: pip install 'majority-kernels[train]'") from error
    loaders = {"breast-cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}
    bunch = loaders[name]()
    features = torch.tensor(bunch.data, dtype=torch.float32)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_index, test_index = (
        torch.as_tensor(index)
        for index in train_test_split(
            torch.arange(len(labels)).numpy(), test_size=test_fraction, stratify=bunch.target, random_state=split_seed
        )
    )
    mean, std = features[train_index].mean(0), features[train_index].std(0)
    features = (features - mean) / std
    return Task(
        name,
        TensorDataset(features[train_index], labels[train_index]),
        TensorDataset(features[test_index], labels[test_index]),
        num_classes=int(labels.max()) + 1,
        input_shape=(features.shape[1],),
        description=f"scikit-learn {name}, {features.shape[1]} standardised features, stratified split "
        f"(seed {split_seed}): {len(train_index)} train / {len(test_index)} test",
    )


class CharWindows(Dataset):
    """Non-overlapping windows of a token sequence: item i is (tokens[i*c : i*c+c], tokens[i*c+1 : i*c+c+1])."""

    def __init__(self, tokens: Tensor, context: int) -> None:
        self.tokens, self.context = tokens, context

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.context

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.context
        return self.tokens[start : start + self.context], self.tokens[start + 1 : start + self.context + 1]


def python_docs_text() -> str:
    """The text of the Python Language Reference's help topics, as shipped with CPython in pydoc_data.topics (what
    `help("if")` shows): about 0.5 MB of English technical prose with grammar rules and code examples. We chose it
    because every CPython install carries it, it is natural-language text (unlike the standard library's source
    code), and it is large enough for a small character-level model; a distribution that strips pydoc_data
    cannot run this task. Topics are joined in sorted order so the text does not depend on dict order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise ImportError(
            "this Python was installed without pydoc_data (the help() topics); the language-model task needs it"
        ) from error
    return "\n\n".join(topics[name] for name in sorted(topics))


def load_python_docs(context: int = 128, test_fraction: float = 0.1) -> Task:
    """Character-level language modelling on python_docs_text(): the first 1 - test_fraction of the characters
    train, the rest test (a contiguous split, so no test window overlaps a training one); the vocabulary is every
    character of the text. The text varies a little between Python versions: the description records which."""
    text = python_docs_text()
    vocabulary = sorted(set(text))
    index = {char: i for i, char in enumerate(vocabulary)}
    tokens = torch.tensor([index[char] for char in text], dtype=torch.int64)
    split = int(len(tokens) * (1 - test_fraction))
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Task(
        "python-docs",
        CharWindows(tokens[:split], context),
        CharWindows(tokens[split:], context),
        num_classes=len(vocabulary),
        input_shape=(context,),
        kind=LANGUAGE_MODEL,
        description=f"Python {platform.python_version()} help topics (pydoc_data, sha256 {digest}), "
        f"{len(text)} characters, vocabulary {len(vocabulary)}, contiguous split "
        f"{split} train / {len(text) - split} test, windows of {context}",
    )


BUILT_IN: dict[str, Callable[[], Task]] = {
    "digits": load_digits,
    "python-docs": load_python_docs,
    "breast-cancer": lambda: load_tabular("breast-cancer"),
    "wine": lambda: load_tabular("wine"),
}


def task_factory(spec: str) -> Callable[[], Task]:
    """The loader a --dataset value names: a built-in name, or "package.module:function" for a function of no
    arguments that returns a Task (see custom_task). Raises ValueError saying what is wrong."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    module_name, colon, function_name = spec.partition(":")
    if not colon or not module_name or not function_name:
        raise ValueError(f"{spec!r} is neither a built-in dataset ({', '.join(BUILT_IN)}) nor module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r}: {error}") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ValueError(f"{module_name!r} has no callable {function_name!r}")
    return factory


def limit(task: Task, train_samples: Optional[int], test_samples: Optional[int]) -> Task:
    """The task on the first train_samples / test_samples items of its datasets (None: all), for quick runs."""

    def first(dataset: Dataset, count: Optional[int]) -> Dataset:
        return dataset if count is None or count >= len(dataset) else Subset(dataset, range(count))

    return dataclasses.replace(task, train=first(task.train, train_samples), test=first(task.test, test_samples))


def _labels(dataset: Dataset) -> Tensor:
    """Every item's class index, in order."""
    return torch.tensor([int(dataset[index][1]) for index in range(len(dataset))], dtype=torch.int64)


class Relabelled(Dataset):
    """A classification dataset with its labels replaced."""

    def __init__(self, dataset: Dataset, labels: Tensor) -> None:
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.dataset[index][0], self.labels[index]


def with_label_noise(task: Task, rate: float, seed: int = 0) -> Task:
    """The task with round(rate * N) of its N training labels replaced by a different class drawn uniformly (the
    test data stays clean). The choice depends on seed only, so every variant and training seed sees the same
    noisy labels."""
    if rate == 0:
        return task
    if task.kind != CLASSIFICATION:
        raise ValueError(f"label noise needs a classification task; {task.name} is a {task.kind} task")
    if not 0 < rate <= 1:
        raise ValueError(f"the label noise rate must be in [0, 1], got {rate}")
    labels = _labels(task.train)
    generator = torch.Generator().manual_seed(seed)
    flipped = torch.randperm(len(labels), generator=generator)[: round(rate * len(labels))]
    offsets = torch.randint(1, task.num_classes, (len(flipped),), generator=generator)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + offsets) % task.num_classes
    return dataclasses.replace(
        task,
        train=Relabelled(task.train, noisy),
        description=f"{task.description}; {rate:.0%} of the training labels noisy",
    )


def with_validation(task: Task, fraction: float, seed: int = 0) -> Task:
    """The task with `fraction` of its training data moved to task.validation, the rest left to train on. Text
    (language_model) keeps its order: the validation windows are the last ones of the training text, so none
    overlaps a training window. Classes are split stratified, with a permutation fixed by seed."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    count = len(task.train)
    if task.kind == LANGUAGE_MODEL:
        cut = count - max(1, round(fraction * count))
        train_index, validation_index = list(range(cut)), list(range(cut, count))
    else:
        labels = _labels(task.train)
        generator = torch.Generator().manual_seed(seed)
        train_index, validation_index = [], []
        for label in labels.unique().tolist():
            members = (labels == label).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=generator)].tolist()
            cut = round(fraction * len(members))
            validation_index += members[:cut]
            train_index += members[cut:]
        train_index.sort()
        validation_index.sort()
    if not train_index or not validation_index:
        raise ValueError(f"{count} training items are too few to carve a validation split of {fraction}")
    return dataclasses.replace(
        task,
        train=Subset(task.train, train_index),
        validation=Subset(task.train, validation_index),
        description=f"{task.description}; validation: {len(validation_index)} of the {count} training items",
    )
