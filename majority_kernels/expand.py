"""Expanded parameters of any module: `expansion` copies of a weight that a module's own forward reads, mixed
once per forward of that module (the owner).

The owner keeps its type and its class's forward. At rest the holder of each weight (the owner or one of its submodules)
has the copies, an nn.Parameter of shape [expansion, *dense shape], under the weight's own name: optimizers,
state_dict keys and `.to()` see them. For the duration of each owner forward, the owner's forward (an instance
attribute wrapping the class's forward; not a hook, since nn.TransformerEncoderLayer leaves its fast path when it
sees hooks) puts under that name the mixed weight (train mode: combine of the copies with a seed from
`functional.draw_seed`, the seed rules of the MK layers) or the mean of the copies (eval mode), and puts the copies
back when the forward returns or raises. So weight standardisation (timm's StdConv2d), transposed weights
(transformers' Conv1D) and the attention fast paths that read submodules' weights (nn.MultiheadAttention,
nn.TransformerEncoderLayer) see a weight of the dense shape, drawn once per forward however often it is read.

Forwards of one owner are serialised by a lock (another thread would otherwise see the other's weight); under
torch.compile the wrapper is traced into the graph instead.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, Iterable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from . import _validation as check
from . import functional
from ._copies import apply_to_copies, copies_of, initial_copies
from ._mean import mean_of_copies
from .checkpoints import mark_expanded

# The attribute of an owner that holds its ExpandedParameters, and that of a holder that names its copies.
OWNER_ATTRIBUTE = "_majority_kernels_expanded"
HOLDER_ATTRIBUTE = "_majority_kernels_copies"


class Slot(NamedTuple):
    """One expanded parameter: `holder._parameters[name]`, named `path` relative to the owner."""

    holder: nn.Module
    name: str
    path: str


def _first_tensor(args: tuple, kwargs: dict) -> Optional[Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value
    return None


class ExpandedParameters:
    """The expanded parameters an owner module's forward reads, and the forward wrapper that binds their mixed
    weights."""

    def __init__(self, owner: nn.Module, expansion: int) -> None:
        self.expansion = expansion
        self.slots: list[Slot] = []
        self._lock = threading.RLock()
        self._depth = 0  # nested forwards of the owner reuse the outermost one's weights
        self._bound: list[tuple[Slot, nn.Parameter]] = []
        self._holder_hooks: list = []
        # The forward the owner had as an instance attribute (another library's wrapper), if any: called inside.
        self._inner_forward = owner.__dict__.get("forward")
        owner.__dict__["forward"] = functools.partial(_expanded_forward, owner)
        # timm's reparameterize_model calls fuse() on every module that has it: the owner with dense weights.
        self._adds_fuse = not hasattr(owner, "fuse")
        if self._adds_fuse:
            owner.__dict__["fuse"] = functools.partial(_fuse, owner)

    # A lock is neither copied nor pickled: copy.deepcopy(model) and torch.save(model) make a fresh one.
    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def forward(self, owner: nn.Module, args: tuple, kwargs: dict) -> object:
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self._lock.acquire()
        try:
            self._depth += 1
            if self._depth == 1:
                self._bind(owner, _first_tensor(args, kwargs))
            inner = self._inner_forward or functools.partial(type(owner).forward, owner)
            return inner(*args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                for slot, copies in self._bound:
                    slot.holder._parameters[slot.name] = copies
                self._bound = []
            if not compiling:
                self._lock.release()

    def _bind(self, owner: nn.Module, anchor: Optional[Tensor]) -> None:
        for slot in self.slots:
            copies = slot.holder._parameters[slot.name]
            if owner.training:
                weight = functional.combine(copies, functional.draw_seed(copies, anchor))
            else:
                weight = mean_of_copies(copies)
                if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
                    # As the Parameter it stands in for: some kernels pick their path by requires_grad (matmul's
                    # folding in cross-attention), and eval outputs stay bit-equal to the dense model's.
                    weight.requires_grad_(copies.requires_grad)
            self._bound.append((slot, copies))
            slot.holder._parameters[slot.name] = weight

    def add(self, slots: Iterable[Slot]) -> None:
        """Bind `slots` too (their holders already hold the copies)."""
        slots = list(slots)
        self.slots.extend(slots)
        names_by_holder: dict[int, tuple[nn.Module, list[str]]] = {}
        for slot in slots:
            names_by_holder.setdefault(id(slot.holder), (slot.holder, []))[1].append(slot.name)
        for holder, names in names_by_holder.values():
            self._holder_hooks += mark_expanded(holder, names)

    def collapse(self, owner: nn.Module, dense_weight: Callable[[nn.Parameter], nn.Parameter]) -> None:
        """Put `dense_weight(copies)` back in every slot and remove the hooks and the record."""
        for slot in self.slots:
            drop_copies(slot.holder, slot.name, dense_weight(slot.holder._parameters[slot.name]))
        for handle in self._holder_hooks:
            handle.remove()
        for attribute in (OWNER_ATTRIBUTE, "forward") + (("fuse",) if self._adds_fuse else ()):
            owner.__dict__.pop(attribute, None)
        if self._inner_forward is not None:
            owner.__dict__["forward"] = self._inner_forward


def holder_inits(holder: nn.Module) -> dict[str, str]:
    """{parameter name: init} of the expanded parameters `holder` holds for an owner (empty if none)."""
    return holder.__dict__.get(HOLDER_ATTRIBUTE, {})


def _apply_expanded(holder: nn.Module, fn, recurse: bool = True) -> nn.Module:
    return apply_to_copies(
        holder, holder_inits(holder), fn, lambda per_copy: type(holder)._apply(holder, per_copy, recurse)
    )


def _reset_expanded(holder: nn.Module) -> None:
    """The holder's own reset_parameters, run on dense-shaped weights; each expanded weight's copies then take the
    result as its init says (replicate: one draw in every copy; independent: a draw per copy, scaled)."""
    inits = holder_inits(holder)
    expanded = {name: holder._parameters[name] for name in inits}
    draws: dict[str, list[Tensor]] = {name: [] for name in inits}
    rounds = max(1 if inits[name] == "replicate" else copies.shape[0] for name, copies in expanded.items())
    try:
        for _ in range(rounds):
            for name, copies in expanded.items():
                holder._parameters[name] = nn.Parameter(torch.empty_like(copies[0]))
            type(holder).reset_parameters(holder)
            for name in inits:
                draws[name].append(holder._parameters[name].detach())
    finally:
        holder._parameters.update(expanded)
    with torch.no_grad():
        for name, copies in expanded.items():
            fresh = iter(draws[name])
            copies.copy_(initial_copies(draws[name][0], copies.shape[0], inits[name], fresh.__next__))


def adopt_copies(holder: nn.Module, name: str, copies: nn.Parameter, init: str) -> None:
    """Put `copies` in `holder` under `name`. Instance attributes, so the holder keeps its class: Module.to /
    to_empty / float see the copies one by one, and reset_parameters initialises them with the dense shape's fan."""
    holder._parameters[name] = copies
    holder.__dict__.setdefault(HOLDER_ATTRIBUTE, {})[name] = init
    holder.__dict__["_apply"] = functools.partial(_apply_expanded, holder)
    if hasattr(type(holder), "reset_parameters"):
        holder.__dict__["reset_parameters"] = functools.partial(_reset_expanded, holder)


def drop_copies(holder: nn.Module, name: str, dense: nn.Parameter) -> None:
    """Undo _adopt_copies: `holder` holds the dense weight `dense` under `name`."""
    holder._parameters[name] = dense
    inits = holder_inits(holder)
    inits.pop(name, None)
    if not inits:
        for attribute in (HOLDER_ATTRIBUTE, "_apply", "reset_parameters"):
            holder.__dict__.pop(attribute, None)


def expanded_copies(holder: nn.Module, name: str, expansion: int, init: str) -> nn.Parameter:
    """The copies of `holder`'s parameter `name` as a new Parameter."""
    return nn.Parameter(copies_of(holder, name, expansion, init), requires_grad=holder._parameters[name].requires_grad)


def _expanded_forward(owner: nn.Module, *args, **kwargs) -> object:
    return owner_record(owner).forward(owner, args, kwargs)


def mean_parameters() -> Callable[[nn.Parameter], nn.Parameter]:
    """A function from copies to the dense Parameter holding their mean, made once per copies (tied weights stay
    one Parameter)."""
    made: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}  # id(copies) -> (copies, dense)

    def dense_weight(copies: nn.Parameter) -> nn.Parameter:
        if id(copies) not in made:
            with torch.no_grad():
                made[id(copies)] = (
                    copies,
                    nn.Parameter(mean_of_copies(copies.detach()), requires_grad=copies.requires_grad),
                )
        return made[id(copies)][1]

    return dense_weight


def _fuse(owner: nn.Module) -> nn.Module:
    owner_record(owner).collapse(owner, mean_parameters())
    return owner


def owner_record(owner: nn.Module) -> Optional[ExpandedParameters]:
    """The ExpandedParameters bound to `owner`, if any."""
    return owner.__dict__.get(OWNER_ATTRIBUTE)


def bind(owner: nn.Module, slots: Iterable[Slot], expansion: int) -> ExpandedParameters:
    """Bind `slots` (whose holders already hold the copies) to `owner`, creating its record if needed."""
    record = owner_record(owner)
    if record is None:
        record = ExpandedParameters(owner, expansion)
        owner.__dict__[OWNER_ATTRIBUTE] = record
    record.add(slots)
    return record


def _resolve(owner: nn.Module, path: str) -> tuple[nn.Module, str]:
    holder_path, _, name = path.rpartition(".")
    try:
        holder = owner.get_submodule(holder_path) if holder_path else owner
    except AttributeError:
        holder = None
    if holder is None or not isinstance(holder._parameters.get(name), nn.Parameter):
        raise ValueError(f"expand_parameters: {type(owner).__name__} has no parameter {path!r}")
    return holder, name


def expand_parameters(
    owner: nn.Module, names: Iterable[str], expansion: int = 4, *, init: str = "replicate"
) -> nn.Module:
    """Expand, in place, the parameters `names` (dotted paths relative to `owner`, e.g. "weight" or
    "proj.weight") into `expansion` copies mixed once per forward of `owner`, whose forward reads them; returns
    `owner`. Use it for modules `convert` does not cover, or to bind a submodule's weight at the module that reads
    it (a forward that reads `self.proj.weight` itself). `init` as for `convert`; "independent" needs the holder's
    reset_parameters. `collapse(owner)` undoes it."""
    owner = check.check_module(owner, "expand_parameters")
    expansion, init = check.check_expansion(expansion), check.check_init(init)
    if isinstance(names, str):
        names = [names]
    record = owner_record(owner)
    if record is not None and record.expansion != expansion:
        raise ValueError(
            f"expand_parameters: {type(owner).__name__} already has weights expanded with expansion "
            f"{record.expansion}, not {expansion}; collapse it first"
        )
    resolved = [(path, *_resolve(owner, path)) for path in names]
    for path, holder, name in resolved:
        check.check_floating(holder._parameters[name], f"parameter {path!r}")
        if name in holder_inits(holder):
            raise ValueError(f"expand_parameters: {path!r} is already expanded")
    for _, holder, name in resolved:
        adopt_copies(holder, name, expanded_copies(holder, name, expansion, init), init)
    bind(owner, [Slot(holder, name, path) for path, holder, name in resolved], expansion)
    return owner
