"""Eval mode against the collapsed model over a long training run.

A small MK model (embedding, 1-D convolution, linear) trains with AdamW, fused and not, two micro-batches of
gradient accumulation per step; every `--eval-every` steps its eval-mode loss is compared with the loss of a fresh
`mk.collapse` of a copy of it, and the resident memory is read. Eval mode computes the mean of the copies on every
forward, so the two losses must agree exactly, and the memory must stay flat.

    python benchmarks/eval_consistency.py [--steps 2000] [--eval-every 100]
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

import majority_kernels as mk

VOCAB, LENGTH, WIDTH, CLASSES, BATCH = 64, 8, 16, 5, 32


class TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH, padding_idx=0)
        self.conv = nn.Conv1d(WIDTH, WIDTH, 3, padding=1)
        self.head = nn.Linear(WIDTH * LENGTH, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.conv(self.embed(tokens).transpose(1, 2)))
        return self.head(hidden.flatten(1))


def mk_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mk.convert(
        TokenClassifier(), expansion=4, init="independent", layer_types=(nn.Linear, nn.Conv1d, nn.Embedding)
    )


def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and labels: a rule the model can learn, with a fifth of the labels drawn at random (so the loss
    stays well above zero and a stale eval would show)."""
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=generator)
    noise = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    noisy = torch.rand(BATCH, generator=generator) < 0.2
    return tokens, torch.where(noisy, noise, tokens[:, 0] % CLASSES)


def rss_mib() -> float:
    """This process's resident memory in MiB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def run(fused: bool, steps: int, eval_every: int, micro_batches: int = 2) -> dict:
    """Trains mk_model() for `steps` optimizer steps; returns the largest |eval loss - collapsed loss| over the
    evaluations, their count, and the RSS at the first and the last evaluation."""
    model = mk_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=fused)
    data, held_out = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    eval_tokens, eval_labels = batch(held_out)
    worst, evaluations, rss = 0.0, 0, []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        for _ in range(micro_batches):
            tokens, labels = batch(data)
            (F.cross_entropy(model(tokens), labels) / micro_batches).backward()
        optimizer.step()
        if step % eval_every == 0:
            model.eval()
            with torch.no_grad():
                eval_loss = F.cross_entropy(model(eval_tokens), eval_labels).item()
                collapsed = mk.collapse(copy.deepcopy(model))
                collapsed_loss = F.cross_entropy(collapsed(eval_tokens), eval_labels).item()
            model.train()
            worst = max(worst, abs(eval_loss - collapsed_loss))
            evaluations += 1
            rss.append(rss_mib())
    return {
        "optimizer": f"AdamW(fused={fused})",
        "steps": steps,
        "evaluations": evaluations,
        "max_abs_difference": worst,
        "last_eval_loss": eval_loss,
        "rss_start_mib": rss[0],
        "rss_end_mib": rss[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=100)
    args = parser.parse_args()
    print(
        "| optimizer | steps | evaluations | max abs(eval - collapsed) loss | last eval loss | RSS first eval "
        "(MiB) | RSS last eval (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for fused in (True, False):
        r = run(fused, args.steps, args.eval_every)
        print(
            f"| {r['optimizer']} | {r['steps']} | {r['evaluations']} | {r['max_abs_difference']:.3g} | "
            f"{r['last_eval_loss']:.4f} | {r['rss_start_mib']:.1f} | {r['rss_end_mib']:.1f} |"
        )


if __name__ == "__main__":
    main()
