"""benchmarks/model_coverage.py on every model whose package is installed: convert covers >= 95% of the
non-embedding weight elements (all of them where every weight is a dense-like layer), eval equals the original,
training steps lower the loss, and the collapsed model loads strictly into a fresh one. transformers runs beside
every torch this suite supports; timm needs torchvision, which CI installs in its CUDA-build venv."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import model_coverage  # noqa: E402

sys.path.pop(0)

# Models whose every non-embedding weight is read by a layer's own forward or an attention module's.
EVERY_WEIGHT = {
    "bert",
    "gpt2",
    "llama",
    "t5",
    "vit",
    "nn.Transformer",
    "timm resnet18",
    "timm vit_tiny",
    "timm convnext_atto",
    "timm efficientnet_b0",
    "timm resnetv2_50x1_bit",
}


@pytest.mark.parametrize("case", model_coverage.CASES, ids=[case.name for case in model_coverage.CASES])
def test_model_converts_trains_and_collapses(case):
    if not model_coverage.available(case):
        pytest.skip(f"{case.requires} is not installed (or does not import beside this torch)")
    result = model_coverage.run_case(case)
    assert result.share >= model_coverage.MIN_SHARE
    if case.name in EVERY_WEIGHT:
        assert result.share == 1.0
    assert result.eval_difference == 0.0, "replicate init: eval must compute exactly what the original did"
    assert result.got_gradients and result.losses[-1] < result.losses[0]
    assert result.loads_strictly and result.collapsed_difference <= 1e-5
    assert result.passed
