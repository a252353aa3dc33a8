"""Third-party models, built from small configs with random init (nothing downloaded): a Hugging Face BERT-style
classifier and a timm ResNet are converted, trained a few steps and collapsed; the collapsed model computes what
the MK model computes in eval mode, and its state_dict loads into the unconverted model.

transformers runs beside every torch this suite supports. timm needs torchvision, which does not import beside
the CPU torch 2.13 wheel: CI runs these tests again in its CUDA-build venv (torch 2.14.1 + torchvision), where the
timm test runs."""

import copy

import pytest
import torch
from torch import nn

import majority_kernels as mk


def train_a_few_steps(model: nn.Module, make_batch, loss_of, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_of(model, *make_batch(step))
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()


def assert_collapse_keeps_eval_outputs(mk_model: nn.Module, unconverted: nn.Module, forward) -> None:
    """collapse(mk_model) computes mk_model's eval outputs, and its state_dict loads strictly into `unconverted`
    (a fresh model of the original architecture), which then computes them too."""
    mk_model.eval()
    with torch.no_grad():
        expected = forward(mk_model)
        collapsed = mk.collapse(copy.deepcopy(mk_model)).eval()
        assert not any(isinstance(m, mk.layers._MKLayer) for m in collapsed.modules())
        torch.testing.assert_close(forward(collapsed), expected, rtol=1e-5, atol=1e-6)
        unconverted.load_state_dict(collapsed.state_dict(), strict=True)
        torch.testing.assert_close(forward(unconverted.eval()), expected, rtol=1e-5, atol=1e-6)
    return collapsed


@pytest.mark.parametrize("layer_types", [(nn.Linear,), (nn.Linear, nn.Embedding)], ids=["linear", "linear+embedding"])
def test_huggingface_bert_classifier_convert_train_collapse(layer_types):
    transformers = pytest.importorskip("transformers")
    if not transformers.is_torch_available():  # each transformers release needs a recent enough torch
        pytest.skip(f"transformers {transformers.__version__} does not support torch {torch.__version__}")
    config = transformers.BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    unconverted = transformers.BertForSequenceClassification(config)
    converted = sum(type(m) in layer_types for m in model.modules())
    mk.convert(model, expansion=3, layer_types=layer_types)
    assert sum(isinstance(m, mk.layers._MKLayer) for m in model.modules()) == converted > 0

    def make_batch(step):
        generator = torch.Generator().manual_seed(step)
        ids = torch.randint(1, 97, (4, 10), generator=generator)
        return ids, torch.randint(0, 3, (4,), generator=generator)

    train_a_few_steps(model, make_batch, lambda m, ids, labels: m(input_ids=ids, labels=labels).loss)
    ids, _ = make_batch(99)
    assert_collapse_keeps_eval_outputs(model, unconverted, lambda m: m(input_ids=ids).logits)


def test_timm_resnet_convert_train_collapse_and_reparameterize():
    timm = pytest.importorskip("timm")
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5)
    unconverted = timm.create_model("resnet18", pretrained=False, num_classes=5)
    mk.convert(model, expansion=2)
    assert sum(isinstance(m, (mk.MKConv2d, mk.MKLinear)) for m in model.modules()) == 21  # 20 convs + the head

    def make_batch(step):
        generator = torch.Generator().manual_seed(step)
        return torch.randn(2, 3, 32, 32, generator=generator), torch.randint(0, 5, (2,), generator=generator)

    train_a_few_steps(model, make_batch, lambda m, x, y: nn.functional.cross_entropy(m(x), y), steps=2)
    x, _ = make_batch(99)
    assert_collapse_keeps_eval_outputs(model, unconverted, lambda m: m(x))
    # timm's own structural re-parameterisation replaces each MK layer by its fuse(), i.e. its dense layer.
    reparameterized = reparameterize_model(model.eval())
    assert not any(isinstance(m, mk.layers._MKLayer) for m in reparameterized.modules())
    with torch.no_grad():
        torch.testing.assert_close(reparameterized(x), model(x), rtol=1e-5, atol=1e-6)
