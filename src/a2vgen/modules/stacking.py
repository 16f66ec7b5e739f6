"""Generators of one network structure trained as one batched step: their parameters become views into
``[K, ...]`` tensors for the length of a client visit, and one call runs their forward passes: the network
class's own ``stacked_forward`` where it defines one (the default VAE's is written with batched matrix
products, see :mod:`a2vgen.nn.stacked`), else ``torch.func.vmap`` over the network's forward.

Each generator keeps its own parameter objects (the optimizer state, resets, paging, FedAvg and checkpoints
see nothing new); only their storage is shared while stacked. After the backward pass each parameter gets its
slice of the stacked gradient as its own ``.grad``, so clipping and AdamW work per generator as before, and
generators absent from a step get no gradient at all (AdamW skips them, as when trained apart).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from a2vgen.nn.stacked import WeightGradientBounds


def structure(net: nn.Module) -> tuple:
    """What must match for networks to stack: type, and every parameter's and buffer's name, shape and dtype."""
    tensors = [*net.named_parameters(), *net.named_buffers()]
    return (type(net), tuple((name, tuple(t.shape), t.dtype) for name, t in tensors))


def meta_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every parameter and buffer on the meta device (its tensors are never copied)."""
    memo: dict[int, Any] = {}
    for t in net.parameters():
        memo[id(t)] = nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
    for t in net.buffers():
        memo[id(t)] = torch.empty_like(t, device="meta")
    return copy.deepcopy(net, memo)


def unstack(tree: Any, count: int) -> list[Any]:
    """``tree`` (tensors, tuples, named tuples, lists, dicts) with a leading axis of ``count`` on every tensor,
    as ``count`` trees. Unbinding is one autograd node per tensor (its backward stacks the gradients), where
    indexing entry by entry would build a zero-filled gradient of the whole tensor per entry."""
    if isinstance(tree, torch.Tensor):
        return list(tree.unbind(0))
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return [type(tree)(*parts) for parts in zip(*(unstack(t, count) for t in tree))]
    if isinstance(tree, (tuple, list)):
        return [type(tree)(parts) for parts in zip(*(unstack(t, count) for t in tree))] if tree else [tree] * count
    if isinstance(tree, dict):
        values = [unstack(v, count) for v in tree.values()]
        return [dict(zip(tree, parts)) for parts in zip(*values)] if tree else [{}] * count
    return [tree] * count


class WeightFirstLinear(torch.autograd.Function):
    """``F.linear`` whose weight gradient is computed as ``grad.T @ x``, in the weight's own layout.

    Under ``vmap`` the built-in linear's weight gradient comes out transposed (``[K, in, out]``), and
    accumulating it into a ``[K, out, in]`` stack costs a strided copy as long as the matrix product
    itself (measured: 2 x 28 ms of a 190 ms step at default sizes). Same numbers, other order of work.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        flat_grad, flat_x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = flat_grad.t() @ flat_x if ctx.needs_input_grad[1] else None
        grad_bias = flat_grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class WeightFirstLinears(TorchFunctionMode):
    """Routes every ``F.linear`` (``nn.Linear`` included) through :class:`WeightFirstLinear`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *rest = args
            return WeightFirstLinear.apply(x, weight, rest[0] if rest else kwargs.get("bias"))
        return func(*args, **kwargs)


class StackedBuffers(Mapping[str, torch.Tensor]):
    """The buffers of a stack's networks at ``positions``, each stacked ``[len(positions), ...]`` when first read:
    a ``stacked_forward`` reads a few of them (the default VAE's, its standardizations), and stacking the others,
    some of which change every step, would cost a copy per step for nothing."""

    def __init__(self, stack: StackedNetworks, positions: list[int]) -> None:
        self.stack, self.positions = stack, positions

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.stack.stacked_buffer(name, self.positions)

    def __iter__(self) -> Iterator[str]:
        return iter(self.stack.buffer_owners)

    def __len__(self) -> int:
        return len(self.stack.buffer_owners)


class StackedNetworks:
    """``nets`` (at least two, of one :func:`structure`) with their parameters stacked into ``[K, ...]`` tensors.

    While stacked, ``nets[k]``'s parameters are views of entry ``k`` of :attr:`params`: in-place updates by
    the optimizer, a reset or a load reach the stack. :meth:`release` gives every parameter its own storage
    again. :meth:`valid` tells whether a parameter has been given other storage in the meantime.
    """

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        if len(nets) < 2 or len({structure(n) for n in nets}) != 1:
            raise ValueError("stacking needs at least two networks of one structure")
        self.nets = list(nets)
        self.template = meta_copy(self.nets[0])
        members = [dict(n.named_parameters()) for n in self.nets]
        self.members = {name: [m[name] for m in members] for name in members[0]}
        self.params: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, params in self.members.items():
                stacked = torch.stack([p.detach() for p in params]).requires_grad_(params[0].requires_grad)
                for k, p in enumerate(params):
                    p.data = stacked.detach()[k]
                self.params[name] = stacked
        self._homes = {name: [p.data_ptr() for p in params] for name, params in self.members.items()}
        # where each network's buffers live (a buffer may be replaced, e.g. by ``set_statistics``: read when used)
        self.buffer_owners: dict[str, list[tuple[nn.Module, str]]] = {}
        for name, _ in self.nets[0].named_buffers():
            owner, _, local = name.rpartition(".")
            self.buffer_owners[name] = [(net.get_submodule(owner), local) for net in self.nets]
        self._buffers: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}
        self.used: set[int] = set()
        self.grads: dict[str, torch.Tensor] = {}  # the last stacked gradients handed out, until clipped
        self.clip_positions: list[int] = []
        self.grad_bounds = WeightGradientBounds()  # of this step's weight gradients (the default VAE's forward)

    def __len__(self) -> int:
        return len(self.nets)

    def valid(self) -> bool:
        """Whether every parameter still lives in the stack (a load with ``assign`` or ``p.data = ...`` moves it out)."""
        return all(
            p.data_ptr() == home for name, params in self.members.items() for p, home in zip(params, self._homes[name])
        )

    def buffers(self, positions: list[int]) -> StackedBuffers:
        """The current buffers of ``positions``, each stacked when read (:class:`StackedBuffers`)."""
        return StackedBuffers(self, positions)

    def stacked_buffer(self, name: str, positions: list[int]) -> torch.Tensor:
        """Buffer ``name`` of the networks at ``positions``, stacked (restacked only where one changed)."""
        tensors = [owner._buffers[local] for owner, local in (self.buffer_owners[name][k] for k in positions)]
        stamp = tuple(positions) + tuple(t._version for t in tensors) + tuple(t.data_ptr() for t in tensors)
        cached = self._buffers.get(name)
        if cached is None or cached[0] != stamp:
            cached = (stamp, torch.stack([t.detach() for t in tensors]))
            self._buffers[name] = cached
        return cached[1]

    def __call__(self, positions: list[int], args: tuple, kwargs: dict) -> Any:
        """``nets[k](*args[j], **kwargs[j])`` for ``k = positions[j]``, as one call (the network's
        ``stacked_forward``, or ``vmap``): every tensor in ``args``/``kwargs`` has a leading axis of
        ``len(positions)``; so has every tensor of the output."""
        device = next(iter(self.params.values())).device
        if positions == list(range(len(self))):
            params = self.params
        else:
            index = torch.tensor(positions, device=device)
            params = {name: stacked[index] for name, stacked in self.params.items()}

        def forward(p: dict, b: dict, a: tuple, kw: dict) -> Any:
            return functional_call(self.template, (p, b), a, kw)

        buffers = self.buffers(positions)
        if not self.used:  # a new step
            self.grad_bounds.clear()
        if "stacked_forward" in type(self.template).__dict__:  # its own, not a parent's with another forward
            with self.grad_bounds.recording():
                out = self.template.stacked_forward(params, buffers, *args, **kwargs)
        elif torch.is_autocast_enabled(device.type):  # the built-in linear casts
            out = vmap(forward)(params, dict(buffers), args, kwargs)
        else:
            with WeightFirstLinears():
                out = vmap(forward)(params, dict(buffers), args, kwargs)
        self.used.update(positions)
        return out

    def distribute_grads(self, grads: dict[str, torch.Tensor | None] | None = None) -> None:
        """Hand each network that ran since the last call its slice of the stacked gradients (``grads`` by
        parameter name, default: the stacked tensors' ``.grad``), added to a gradient it already has."""
        if not self.used:
            return
        if grads is None:
            grads = {name: stacked.grad for name, stacked in self.params.items()}
            for stacked in self.params.values():
                stacked.grad = None
        # each parameter's gradient must have its layout (AdamW's fused kernel assumes it): a transposed
        # one (e.g. of a weight used as ``x @ w.T`` through addmm) is copied into it
        self.grads = {name: grad.contiguous() for name, grad in grads.items() if grad is not None}
        accumulated = False
        for name, grad in self.grads.items():
            for k in sorted(self.used):
                p = self.members[name][k]
                accumulated |= p.grad is not None
                p.grad = grad[k] if p.grad is None else p.grad + grad[k]
        # accumulated gradients are no longer slices of the stack: they are clipped one network at a time
        self.clip_positions = [] if accumulated else sorted(self.used)
        self.used.clear()

    @torch.no_grad()
    def clip_grads(self, max_norm: float) -> None:
        """Clip the gradient norm of each network of the last :meth:`distribute_grads` on its own, as
        ``torch.nn.utils.clip_grad_norm_`` would per network, in one pass over the stacked gradients, or none
        where :meth:`norm_bounds` shows every network within ``max_norm``."""
        grads = list(self.grads.values())
        if not grads or not self.clip_positions:
            return
        index = torch.tensor(self.clip_positions, device=grads[0].device)
        bounds = self.norm_bounds()
        # within the limit by a margin for rounding (a bound as tight as the norm, of one sample, may round
        # below it): clipping would leave every gradient as it is, and the pass over them is saved
        if bounds is not None and bool((bounds[index] * (1 + 1e-3) + 1e-6 < max_norm).all()):
            self.grads, self.clip_positions = {}, []
            return
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, dim=0)
        coef = torch.ones_like(total)
        coef[index] = (max_norm / (total[index] + 1e-6)).clamp(max=1.0)
        if bool((coef < 1).any()):
            for g in grads:
                g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
        self.grads, self.clip_positions = {}, []

    def norm_bounds(self) -> torch.Tensor | None:
        """Upper bounds ``[K]`` of each network's gradient norm: from the weight gradients' bounds where the
        backward pass recorded them (:class:`~a2vgen.nn.stacked.WeightGradientBounds`), from the other
        gradients themselves; ``None`` where no bound was recorded."""
        bounds = [self.grad_bounds.bound(g) for g in self.grads.values()]
        if all(b is None for b in bounds):
            return None
        squares = [
            (torch.linalg.vector_norm(g.flatten(1), dim=1) if b is None else b).square()
            for g, b in zip(self.grads.values(), bounds)
        ]
        return torch.stack(squares).sum(0).sqrt()

    def release(self) -> None:
        """Give every parameter its own storage again (and drop the gradients that still point into the stack);
        a second call does nothing."""
        if not self.params:
            return
        self._buffers, self.grads = {}, {}
        self.grad_bounds.clear()
        with torch.no_grad():
            for name, params in self.members.items():  # one stacked tensor at a time: a small transient
                for p, home in zip(params, self._homes[name]):
                    if p.data_ptr() == home:
                        p.data = p.data.clone()
                    if p.grad is not None and p.grad._base is not None:  # a slice of a stacked gradient
                        p.grad = None
                del self.params[name]
        self._homes = {}
        self.used.clear()
