"""Drop-in layers: MKLinear, MKConv1d, MKConv2d, MKConv3d, MKEmbedding.

Each keeps `expansion` copies of the dense weight in one parameter of shape [expansion, *dense weight shape]; the
bias (where the layer has one) is not expanded. In train mode every forward mixes the copies with fresh mixing
weights (a new seed drawn from the weight device's torch generator); in eval mode it uses their mean, computed from
the copies on every forward: nothing is cached, so no way of changing the parameter (fused optimizer steps, writes
through `.data`, parametrizations) can leave eval mode or the dense layer stale.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _validation as check
from . import functional
from ._copies import apply_to_copies, copies_of
from ._mean import mean_of_copies
from .checkpoints import mark_expanded


class _MKLayer(nn.Module):
    """What every MK layer shares: the expanded weight, eval-mode mean, dense conversion."""

    dense_type: type[nn.Module]
    expansion: int
    weight: nn.Parameter
    bias: Optional[nn.Parameter]

    @classmethod
    def from_dense(cls, layer: nn.Module, expansion: int = 4, init: str = "replicate") -> _MKLayer:
        """The MK layer for a dense `layer`: "replicate" copies its weight into every copy (so the MK layer in
        eval mode computes exactly what `layer` does); "independent" draws each copy afresh with the dense
        layer's own initialisation, scaled by sqrt((e + 1) / 2) so the mixed kernel keeps the init's variance.
        The bias is copied either way."""
        if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():
            raise ValueError(
                f"{cls.__name__}.from_dense needs an initialised layer; run a forward through the "
                f"lazy {type(layer).__name__} first"
            )
        if type(layer) is not cls.dense_type:
            raise TypeError(
                f"{cls.__name__}.from_dense takes a {cls.dense_type.__module__}."
                f"{cls.dense_type.__name__}, got {type(layer).__name__}"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._adopt(layer, check.check_expansion(expansion), check.check_init(init))
        return module

    def _adopt(self, dense: nn.Module, expansion: int, init: str) -> None:
        for name in self._hyperparameters:
            setattr(self, name, getattr(dense, name))
        self.expansion, self.init = expansion, init
        self.weight = nn.Parameter(
            copies_of(dense, "weight", expansion, init), requires_grad=dense.weight.requires_grad
        )
        bias = getattr(dense, "bias", None)  # nn.Embedding has none
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        else:
            self.register_parameter("bias", None)
        mark_expanded(self, ["weight"])  # a dense state_dict loads; dense_state_dict finds the copies
        self.train(dense.training)

    def reset_parameters(self) -> None:
        """Initialise as a new dense layer is initialised (the fan from the dense shape, not the copies'): with
        init="replicate" every copy gets one dense draw (the layer then computes what that dense layer does),
        with "independent" each copy a draw of its own, scaled by sqrt((e + 1) / 2); the bias as the dense
        layer's. This is what `to_empty()` after building on the meta device needs."""
        dense = self._make_dense(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(copies_of(dense, "weight", self.expansion, self.init))
            if self.bias is not None:
                self.bias.copy_(dense.bias)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        # Memory formats apply to each copy as the dense weight (channels_last on a converted CNN).
        return apply_to_copies(self, ["weight"], fn, lambda per_copy: super(_MKLayer, self)._apply(per_copy, recurse))

    def collapsed_weight(self) -> Tensor:
        """The mean kernel mean_k weight[k] of the copies as they are now: what eval mode uses and what the dense
        layer gets (differentiable where grad mode is on)."""
        return mean_of_copies(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        if self.training:
            return self._mixed_forward(input, functional.draw_seed(self.weight, input))
        return self._eval_forward(input)

    def _eval_forward(self, input: Tensor) -> Tensor:
        return self._dense_forward(input, self.collapsed_weight())

    def to_dense(self) -> nn.Module:
        """The plain torch.nn layer with the mean kernel (a copy: later changes to this layer do not reach it)."""
        with torch.no_grad():
            mean = nn.Parameter(self.collapsed_weight(), requires_grad=self.weight.requires_grad)
        return self.dense_with(mean)

    def dense_with(self, weight: nn.Parameter) -> nn.Module:
        """The plain torch.nn layer with these hyperparameters, this bias (copied) and `weight` itself as its
        weight (collapse passes one Parameter for all the layers of a tie)."""
        dense = self._empty_dense()
        dense.weight = weight
        if self.bias is not None:
            with torch.no_grad():
                dense.bias.copy_(self.bias)
            dense.bias.requires_grad_(self.bias.requires_grad)
        return dense.train(self.training)

    def fuse(self) -> nn.Module:
        """timm's re-parameterisation hook (`reparameterize_model` calls it): the dense layer."""
        return self.to_dense()

    def _empty_dense(self) -> nn.Module:
        """The dense layer with these hyperparameters, its parameters allocated but not initialised."""
        layer = self._make_dense(device="meta", dtype=self.weight.dtype)
        return layer.to_empty(device=self.weight.device)

    _hyperparameters: tuple[str, ...]

    def _make_dense(self, device, dtype) -> nn.Module:
        raise NotImplementedError

    def _mixed_forward(self, input: Tensor, seed: Tensor) -> Tensor:
        raise NotImplementedError

    def _dense_forward(self, input: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError


class MKLinear(_MKLayer):
    """nn.Linear with `expansion` mixed copies of its weight (weight: [expansion, out_features, in_features])."""

    dense_type = nn.Linear
    _hyperparameters = ("in_features", "out_features")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        expansion: int = 4,
        init: str = "replicate",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        expansion, init = check.check_expansion(expansion), check.check_init(init)
        self._adopt(nn.Linear(in_features, out_features, bias, device=device, dtype=dtype), expansion, init)

    def _make_dense(self, device, dtype) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, self.bias is not None, device=device, dtype=dtype)

    def _mixed_forward(self, input: Tensor, seed: Tensor) -> Tensor:
        return functional.majority_linear(input, self.weight, self.bias, seed=seed)

    def _dense_forward(self, input: Tensor, weight: Tensor) -> Tensor:
        return F.linear(input, weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"expansion={self.expansion}"
        )


class _MKConvNd(_MKLayer):
    dims: int
    _hyperparameters = (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
        "_reversed_padding_repeated_twice",
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding: Union[int, tuple, str] = 0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        expansion: int = 4,
        init: str = "replicate",
    ) -> None:
        super().__init__()
        expansion, init = check.check_expansion(expansion), check.check_init(init)
        dense = self.dense_type(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._adopt(dense, expansion, init)

    def _make_dense(self, device, dtype) -> nn.Module:
        return self.dense_type(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device=device,
            dtype=dtype,
        )

    def _padded(self, input: Tensor) -> tuple[Tensor, Union[tuple, str]]:
        # Non-zero padding modes pad explicitly, then convolve without padding (as torch.nn.ConvNd does).
        if self.padding_mode == "zeros":
            return input, self.padding
        return F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), 0

    def _mixed_forward(self, input: Tensor, seed: Tensor) -> Tensor:
        input, padding = self._padded(input)
        conv = (functional.majority_conv1d, functional.majority_conv2d, functional.majority_conv3d)[self.dims - 1]
        return conv(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups, seed=seed)

    def _dense_forward(self, input: Tensor, weight: Tensor) -> Tensor:
        input, padding = self._padded(input)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        return conv(input, weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}"
        )
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return text + f", expansion={self.expansion}"


class MKConv1d(_MKConvNd):
    """nn.Conv1d with `expansion` mixed copies of its kernel."""

    dense_type, dims = nn.Conv1d, 1


class MKConv2d(_MKConvNd):
    """nn.Conv2d with `expansion` mixed copies of its kernel."""

    dense_type, dims = nn.Conv2d, 2


class MKConv3d(_MKConvNd):
    """nn.Conv3d with `expansion` mixed copies of its kernel."""

    dense_type, dims = nn.Conv3d, 3


class MKEmbedding(_MKLayer):
    """nn.Embedding with `expansion` mixed copies of its table (weight: [expansion, num_embeddings,
    embedding_dim]). A training forward mixes only the rows the batch looks up; eval mode looks them up in the
    mean table. max_norm, scale_grad_by_freq and sparse=True are refused (here and in from_dense)."""

    dense_type = nn.Embedding
    _hyperparameters = ("num_embeddings", "embedding_dim", "padding_idx")

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: Optional[int] = None,
        *,
        expansion: int = 4,
        init: str = "replicate",
        device=None,
        dtype=None,
        max_norm: Optional[float] = None,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        expansion, init = check.check_expansion(expansion), check.check_init(init)
        dense = nn.Embedding(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            scale_grad_by_freq=scale_grad_by_freq,
            sparse=sparse,
            device=device,
            dtype=dtype,
        )
        self._adopt(dense, expansion, init)

    def _adopt(self, dense: nn.Module, expansion: int, init: str) -> None:
        refused = {
            "max_norm": (
                dense.max_norm is not None,
                "it renormalises the looked-up rows of the table in place, and the mixed rows are "
                "recomputed every step",
            ),
            "scale_grad_by_freq": (dense.scale_grad_by_freq, "the copies' gradients are not rescaled by frequency"),
            "sparse": (
                dense.sparse,
                "the gradient of the copies is a dense [expansion, num_embeddings, embedding_dim] tensor",
            ),
        }
        for option, (used, why) in refused.items():
            if used:
                raise ValueError(
                    f"MKEmbedding does not support {option}={getattr(dense, option)!r}: {why}; use "
                    f"an nn.Embedding without it, or leave this layer dense"
                )
        super()._adopt(dense, expansion, init)

    def _make_dense(self, device, dtype) -> nn.Module:
        return nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, device=device, dtype=dtype)

    def _mixed_forward(self, input: Tensor, seed: Tensor) -> Tensor:
        return functional.majority_embedding(input, self.weight, self.padding_idx, seed=seed)

    def _eval_forward(self, input: Tensor) -> Tensor:
        # The mean of the looked-up rows only (what F.embedding on the mean table gives), not of the whole table.
        rows = self.weight.index_select(1, input.reshape(-1))
        out = mean_of_copies(rows).view(*input.shape, self.embedding_dim)
        if self.padding_idx is not None and out.requires_grad:  # as F.embedding: no gradient to padding_idx
            out = torch.where((input == self.padding_idx).unsqueeze(-1), out.detach(), out)
        return out

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        return text + f", expansion={self.expansion}"


MK_LAYERS: dict[type[nn.Module], type[_MKLayer]] = {
    nn.Linear: MKLinear,
    nn.Conv1d: MKConv1d,
    nn.Conv2d: MKConv2d,
    nn.Conv3d: MKConv3d,
    nn.Embedding: MKEmbedding,
}
