"""The built-in models, made of plain nn.Linear / nn.Conv2d so that mk.convert expands every weight layer.

Each builder takes the Task (input shape, number of classes or vocabulary size) and a multiplier of the hidden
widths, and returns a dense model; the experiment converts one for every MK configuration and builds a wider one
(wide_width) as the over-parameterised reference.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import CLASSIFICATION, LANGUAGE_MODEL, Task


class MLP(nn.Sequential):
    """Flatten, then hidden ReLU layers, then a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        super().__init__(*layers, nn.Linear(in_features, num_classes))


class SmallCNN(nn.Module):
    """Three 3x3 convolutions (two followed by 2x2 max pooling) and a two-layer classifier head, for small images
    such as 8x8 digits."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int, int] = (32, 64, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        first, second, third = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(second, third, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = third * (height // 4) * (width // 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with its own nn.Linear projections, so that every projection of the
    language model is a fused MK layer once converted (nn.MultiheadAttention's would be expanded in place)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attention_norm, self.attention = nn.LayerNorm(width), CausalSelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class CharTransformer(nn.Module):
    """A small GPT-style character language model: token and learned position embeddings, pre-norm blocks, and an
    untied output layer (so that it is expanded too; embeddings are not)."""

    def __init__(self, vocabulary: int, context: int, width: int = 96, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.token_embedding = nn.Embedding(vocabulary, width)
        self.position_embedding = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)
        # GPT-2's scaled init of the projections into the residual stream keeps its variance flat with depth.
        for block in self.blocks:
            for projection in (block.attention.out, block.mlp[2]):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        return self.head(self.norm(self.blocks(x)))


def _scaled(width: int, multiplier: float, multiple: int = 1) -> int:
    return max(multiple, multiple * round(width * multiplier / multiple))


def _mlp(task: Task, width: float = 1.0) -> nn.Module:
    return MLP(math.prod(task.input_shape), task.num_classes, hidden=(_scaled(256, width),) * 2)


def _cnn(task: Task, width: float = 1.0) -> nn.Module:
    channels = tuple(_scaled(count, width) for count in (32, 64, 64))
    return SmallCNN(task.input_shape, task.num_classes, channels=channels, hidden=_scaled(128, width))


LM_WIDTH, LM_HEADS = 48, 4


def _transformer(task: Task, width: float = 1.0) -> nn.Module:
    return CharTransformer(
        task.num_classes, context=task.input_shape[0], width=_scaled(LM_WIDTH, width, LM_HEADS), heads=LM_HEADS
    )


# A builder takes the task and a multiplier of the hidden widths (1: the dense model) and returns a dense model.
Builder = Callable[[Task, float], nn.Module]

# The task kind each model fits, and its builder.
MODELS: dict[str, tuple[str, Builder]] = {
    "mlp": (CLASSIFICATION, _mlp),
    "cnn": (CLASSIFICATION, _cnn),
    "transformer": (LANGUAGE_MODEL, _transformer),
}


def model_builder(name: str, task: Task) -> Builder:
    """The builder of model `name`, after checking that it fits the task; ValueError otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    kind, build = MODELS[name]
    if kind != task.kind:
        raise ValueError(f"model {name!r} is for {kind} tasks; {task.name} is a {task.kind} task")
    if name == "cnn" and len(task.input_shape) != 3:
        raise ValueError(f"model 'cnn' needs (channels, height, width) inputs; {task.name} has {task.input_shape}")
    return build


def parameter_count(build: Builder, task: Task, width: float = 1.0) -> int:
    """The parameters of build(task, width), counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in build(task, width).parameters())


def wide_width(build: Builder, task: Task, factor: float) -> float:
    """The width multiplier whose model has the parameter count nearest factor x the dense model's (same depth,
    wider hidden layers): about sqrt(factor) where layers are quadratic in the width. Found by bisection; raises
    ValueError when the builder's size does not grow with the width (a builder that ignores it)."""
    target = factor * parameter_count(build, task)
    low, high = 1.0, 2.0
    while parameter_count(build, task, high) < target:
        if high > 2 * factor:
            raise ValueError("the model's parameter count does not grow with the width multiplier")
        low, high = high, 2 * high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if parameter_count(build, task, middle) < target else (low, middle)
    return min((low, high), key=lambda width: abs(parameter_count(build, task, width) - target))
