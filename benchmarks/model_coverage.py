"""Which weights `mk.convert` expands in real models, and whether each converted model still works.

Tiny random-init configurations (nothing is downloaded) of Hugging Face BERT (masked LM, tied decoder), GPT-2
(Conv1D projections, tied head), Llama, T5 (tied embeddings), ViT, PyTorch's nn.Transformer, and timm's resnet18,
vit_tiny, convnext_atto, efficientnet_b0 and resnetv2_50x1_bit (StdConv2d) where timm is installed. For each it
converts with the defaults (e = 4, init="replicate") and prints:

  * the share of non-embedding weight elements expanded, and how (fused MK layers / expanded in place);
  * the largest eval-mode output difference to the original model (replicate init: the mean is the weight);
  * the loss over a few training steps with AdamW (finite, and the copies received gradients);
  * whether the collapsed model's state_dict loads strictly into a freshly built model and computes the same.

    python benchmarks/model_coverage.py            # the table (markdown); exit status 1 if a model fails
    python benchmarks/model_coverage.py --models gpt2,t5
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

import majority_kernels as mk

EXPANSION = 4
STEPS = 3
LEARNING_RATE = 1e-4
MIN_SHARE = 0.95  # of non-embedding weight elements


@dataclass
class Case:
    """A model family: build(seed) makes the model, batch() its input, loss(model, batch) a training loss,
    outputs(model, batch) the tensor compared in eval mode."""

    name: str
    requires: str  # the package it needs
    build: Callable[[int], nn.Module]
    batch: Callable[[], dict]
    loss: Callable[[nn.Module, dict], torch.Tensor]
    outputs: Callable[[nn.Module, dict], torch.Tensor]


def _ids(vocab: int, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(1))


def _images(size: int = 32, batch: int = 8) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _hf(model_class: str, config_class: str, **config) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        import transformers

        torch.manual_seed(seed)
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))

    return build


def _lm_batch(vocab: int) -> Callable[[], dict]:
    return lambda: {"input_ids": _ids(vocab), "labels": _ids(vocab)}


def _hf_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def _hf_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).logits


def _classifier_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits = model(batch["x"])
    logits = logits.logits if hasattr(logits, "logits") else logits
    return nn.functional.cross_entropy(logits, batch["y"])


def _classifier_outputs(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(batch["x"])
    return out.logits if hasattr(out, "logits") else out


def _image_batch(size: int = 32) -> Callable[[], dict]:
    # Batches of 8: batch norm over 2 samples makes a few steps of a CNN a random walk, dense or not.
    return lambda: {"x": _images(size), "y": torch.arange(8) % 5}


def _transformer(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Transformer(
        d_model=32,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=48,
        dropout=0.0,
        batch_first=True,
    )


def _transformer_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"src": torch.randn(2, 7, 32, generator=generator), "tgt": torch.randn(2, 5, 32, generator=generator)}


def _transformer_outputs(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["src"], batch["tgt"])


def _timm(name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        import timm

        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, num_classes=5, **kwargs)

    return build


_TINY_TEXT = dict(vocab_size=97, hidden_size=32, num_attention_heads=4, intermediate_size=48)
CASES: list[Case] = [
    Case(
        "bert",
        "transformers",
        _hf(
            "BertForMaskedLM",
            "BertConfig",
            num_hidden_layers=2,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **_TINY_TEXT,
        ),
        _lm_batch(97),
        _hf_loss,
        _hf_logits,
    ),
    Case(
        "gpt2",
        "transformers",
        _hf(
            "GPT2LMHeadModel",
            "GPT2Config",
            vocab_size=97,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=32,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        _lm_batch(97),
        _hf_loss,
        _hf_logits,
    ),
    Case(
        "llama",
        "transformers",
        _hf(
            "LlamaForCausalLM",
            "LlamaConfig",
            num_hidden_layers=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
            **_TINY_TEXT,
        ),
        _lm_batch(97),
        _hf_loss,
        _hf_logits,
    ),
    Case(
        "t5",
        "transformers",
        _hf(
            "T5ForConditionalGeneration",
            "T5Config",
            vocab_size=97,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
        ),
        _lm_batch(97),
        _hf_loss,
        _hf_logits,
    ),
    Case(
        "vit",
        "transformers",
        _hf(
            "ViTForImageClassification",
            "ViTConfig",
            image_size=32,
            patch_size=8,
            num_labels=5,
            num_hidden_layers=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **{k: v for k, v in _TINY_TEXT.items() if k != "vocab_size"},
        ),
        _image_batch(),
        _classifier_loss,
        _classifier_outputs,
    ),
    Case(
        "nn.Transformer",
        "torch",
        _transformer,
        _transformer_batch,
        lambda model, batch: _transformer_outputs(model, batch).square().mean(),
        _transformer_outputs,
    ),
    Case("timm resnet18", "timm", _timm("resnet18"), _image_batch(), _classifier_loss, _classifier_outputs),
    Case(
        "timm vit_tiny",
        "timm",
        _timm("vit_tiny_patch16_224", img_size=32, patch_size=8),
        _image_batch(),
        _classifier_loss,
        _classifier_outputs,
    ),
    Case("timm convnext_atto", "timm", _timm("convnext_atto"), _image_batch(), _classifier_loss, _classifier_outputs),
    Case(
        "timm efficientnet_b0", "timm", _timm("efficientnet_b0"), _image_batch(), _classifier_loss, _classifier_outputs
    ),
    Case(
        "timm resnetv2_50x1_bit",
        "timm",
        _timm("resnetv2_50x1_bit"),
        _image_batch(),
        _classifier_loss,
        _classifier_outputs,
    ),
]


def available(case: Case) -> bool:
    if importlib.util.find_spec(case.requires) is None:
        return False
    if case.requires == "transformers":
        import transformers

        return transformers.is_torch_available()
    if case.requires == "timm":
        try:
            import timm  # noqa: F401  (timm needs a torchvision that imports beside this torch)
        except Exception:
            return False
    return True


@dataclass
class Result:
    name: str
    weights: int  # non-embedding weight elements of the dense model
    share: float
    fused: int
    in_place: int
    eval_difference: float
    losses: list[float]
    got_gradients: bool
    loads_strictly: bool
    collapsed_difference: float

    @property
    def passed(self) -> bool:
        return (
            self.share >= MIN_SHARE
            and self.eval_difference <= 1e-5
            and all(map(math.isfinite, self.losses))
            and self.got_gradients
            and self.loads_strictly
            and self.collapsed_difference <= 1e-5
        )


def _largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def run_case(case: Case) -> Result:
    """Convert, compare in eval mode, train a few steps, collapse and load strictly into a fresh model."""
    model = case.build(0)
    original = copy.deepcopy(model).eval()
    batch = case.batch()
    model, summary = mk.convert(model, EXPANSION, return_summary=True)
    model.eval()
    with torch.no_grad():
        eval_difference = _largest_difference(case.outputs(model, batch), case.outputs(original, batch))

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = case.loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    expanded = [model.get_parameter(w.names[0]) for w in summary.converted]
    got_gradients = bool(expanded) and all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in expanded if p.requires_grad
    )

    model.eval()
    with torch.no_grad():
        trained = case.outputs(model, batch)
        collapsed = mk.collapse(model).eval()
        fresh = case.build(1).eval()
        try:
            fresh.load_state_dict(collapsed.state_dict(), strict=True)
            loads_strictly = True
        except RuntimeError:
            loads_strictly = False
        collapsed_difference = _largest_difference(case.outputs(fresh, batch), trained)
    return Result(
        case.name,
        sum(w.numel for w in summary.weights if not w.embedding),
        summary.share(),
        sum(w.how == "fused" for w in summary.weights),
        sum(w.how == "expanded" for w in summary.weights),
        eval_difference,
        losses,
        got_gradients,
        loads_strictly,
        collapsed_difference,
    )


def table(results: list[Result]) -> str:
    rows = [
        "| model | non-embedding weight elements | expanded | fused / in place | eval vs original "
        "| train loss (3 steps) | collapse, strict load, same outputs |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for r in results:
        loss = " → ".join(f"{value:.3f}" for value in (r.losses[0], r.losses[-1]))
        loaded = "yes" if r.loads_strictly and r.collapsed_difference <= 1e-5 else "**no**"
        rows.append(
            f"| {r.name} | {r.weights:,} | {100 * r.share:.1f}% | {r.fused} / {r.in_place} "
            f"| {r.eval_difference:.1e} | {loss} | {loaded} |"
        )
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated names (default: every model whose package is installed)")
    args = parser.parse_args(argv)
    chosen = [c for c in CASES if args.models is None or c.name in args.models.split(",")]
    skipped = [c.name for c in chosen if not available(c)]
    results = [run_case(c) for c in chosen if available(c)]
    print(
        f"torch {torch.__version__}, e = {EXPANSION}, init=replicate, backend: "
        f"{mk.backends.backend_for(torch.device('cpu')).name}"
    )
    print(table(results))
    if skipped:
        print(f"\nnot run (package missing): {', '.join(skipped)}")
    failed = [r.name for r in results if not r.passed]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
