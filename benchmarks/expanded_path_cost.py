"""What expanding a weight in place costs against the fused MK layer: one training step (forward, backward,
AdamW) of the same MLP three ways, timed side by side in one run (interleaved rounds, medians):

  dense      plain nn.Linear layers;
  fused      mk.convert on nn.Linear: MKLinear layers;
  in place   the same layers as a subclass of nn.Linear (NonDynamicallyQuantizableLinear), which convert
             expands in place: the module's own forward, with a mixed weight bound for each forward;
  parametrize the alternative mechanism, torch.nn.utils.parametrize with the same mixing (not what the library
             uses: it renames the state_dict keys to parametrizations.weight.original and mixes on every read).

    python benchmarks/expanded_path_cost.py [--width 1024] [--depth 4] [--batch 256] [--expansion 4]
                                            [--device cpu|cuda] [--output benchmarks/results/expanded-path-cost.md]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torch.nn.utils import parametrize

import majority_kernels as mk
from majority_kernels import functional, ops
from majority_kernels._mean import mean_of_copies
from majority_kernels.bench.measure import time_interleaved
from majority_kernels.bench.report import cpu_model


def mlp(layer_type: type[nn.Linear], width: int, depth: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [layer_type(width, width, device=device), nn.GELU()]
    return nn.Sequential(*layers)


class MixedWeight(nn.Module):
    """The parametrization form of the mixing: copies -> one mixed weight (train) or their mean (eval)."""

    def forward(self, copies: torch.Tensor) -> torch.Tensor:
        if self.training:
            return functional.combine(copies, functional.draw_seed(copies))
        return mean_of_copies(copies)


def parametrized(model: nn.Module, expansion: int) -> nn.Module:
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            copies = layer.weight.detach().unsqueeze(0).repeat(expansion, 1, 1)
            parametrize.register_parametrization(layer, "weight", MixedWeight(), unsafe=True)
            layer.parametrizations.weight.original = nn.Parameter(copies)
    return model


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads, CPU kernels: {ops.cpu_capability()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)

    models = {
        "dense": mlp(nn.Linear, args.width, args.depth, device),
        "fused": mk.convert(mlp(nn.Linear, args.width, args.depth, device), args.expansion),
        "in place": mk.convert(mlp(NonDynamicallyQuantizableLinear, args.width, args.depth, device), args.expansion),
        "parametrize": parametrized(mlp(nn.Linear, args.width, args.depth, device), args.expansion),
    }
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    x = torch.randn(args.batch, args.width, device=device)

    def step(name: str):
        def run() -> None:
            optimizers[name].zero_grad(set_to_none=True)
            models[name](x).square().mean().backward()
            optimizers[name].step()

        return run

    samples = time_interleaved({name: step(name) for name in models}, device, warmup=3, repeats=args.repeats)
    medians = {name: statistics.median(times) for name, times in samples.items()}
    lines = [
        "# In-place expansion against the fused MK layer: training step of an MLP",
        "",
        f"{args.depth} layers of {args.width}×{args.width}, batch {args.batch}, e = {args.expansion}, float32, "
        f"AdamW; {machine(device)}; torch {torch.__version__}; median of {args.repeats} interleaved rounds.",
        "",
        "| model | step, ms | × dense | × fused |",
        "|---|---:|---:|---:|",
    ]
    for name, median in medians.items():
        lines.append(
            f"| {name} | {1e3 * median:.2f} | {median / medians['dense']:.2f} | {median / medians['fused']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
