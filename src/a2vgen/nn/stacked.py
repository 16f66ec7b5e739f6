"""The built-in layers' forward passes for ``K`` networks at once, from stacked weights (``[K, ...]`` each).

:class:`~a2vgen.modules.stacking.StackedNetworks` runs any network stacked with ``torch.func.vmap``; a network
that defines ``stacked_forward`` (the default :class:`~a2vgen.nn.cvae.ConditionalVAE` does) is run by it
instead. Written with batched matrix products over the leading ``K`` axis, the same pass does the same
arithmetic with a third fewer operator calls and none of vmap's per-operator batching, which on the CPU cost
as much as the arithmetic (measured at default sizes, 10 networks x 32 samples: forward and backward 64-72 ms
against 96-110 ms with vmap). Activations carry the leading ``K`` axis: ``[K, N, ...]``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F

Params = Mapping[str, torch.Tensor]


class WeightGradientBounds:
    """Upper bounds of the per-network norms of the weight gradients :class:`StackedLinear` computes while
    :meth:`recording`: for a weight used once, ``‖Σᵢ gᵢ xᵢᵀ‖ ≤ Σᵢ ‖gᵢ‖ ‖xᵢ‖`` over the samples ``i``, from the
    activations at hand in the backward pass instead of a pass over the gradient (per network, a weight
    gradient holds ``in x out`` numbers, the rows it is made of ``N x (in + out)``). Gradient clipping needs
    no norm while the bounds show every network within the limit.

    Only weights of at least ``min_numel`` numbers per network get one: smaller gradients are cheap to read,
    and the bound is loose by up to the square root of the batch size, so their own norms keep a network's
    total tight (the default VAE: its two 3,072 x 256 layers are bounded). A bound is kept by gradient tensor
    and holds for that tensor only while it is unchanged: a weight used twice gets the sum of two gradients
    (another tensor, or the first one added to in place), and :meth:`bound` then has none for it.
    """

    _local = threading.local()  # the recording one, per thread

    def __init__(self, min_numel: int = 2**18) -> None:
        self.min_numel = min_numel
        self._bounds: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

    @classmethod
    def active(cls) -> WeightGradientBounds | None:
        """The bounds :meth:`recording` in this thread, if any."""
        return getattr(cls._local, "bounds", None)

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Within: the stacked linear layers run forward in this thread record their weight gradients' bounds
        here."""
        outer, WeightGradientBounds._local.bounds = WeightGradientBounds.active(), self
        try:
            yield
        finally:
            WeightGradientBounds._local.bounds = outer

    def add(self, grad: torch.Tensor, bound: torch.Tensor) -> None:
        """Record ``bound`` ``[K]`` for the weight gradient ``grad`` as it is now."""
        self._bounds[id(grad)] = (weakref.ref(grad), grad._version, bound)

    def bound(self, grad: torch.Tensor) -> torch.Tensor | None:
        """``[K]`` upper bounds of the norms of ``grad``'s entries, or ``None`` where none is known."""
        entry = self._bounds.get(id(grad))
        if entry is None or entry[0]() is not grad or entry[1] != grad._version:
            return None
        return entry[2]

    def clear(self) -> None:
        self._bounds.clear()


class StackedLinear(torch.autograd.Function):
    """``x @ weightᵀ + bias`` for ``x`` ``[K, N, in]``, ``weight`` ``[K, out, in]``, ``bias`` ``[K, out]`` or ``None``.

    The weight gradient is computed as ``gradᵀ @ x``, in the weight's own layout. Autograd's own (for the
    transposed weight, then transposed back) comes out strided and would be copied again to hand it out per
    network: measured 38 ms against 9-14 ms for one 3072 x 256 layer of 10 networks. The transposed
    gradient is made contiguous first where the output is much narrower than the input, which the batched
    product runs 1.5x faster on (and slower on other shapes). Run within
    :meth:`WeightGradientBounds.recording`, the backward pass also bounds the weight gradient's norms there.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.bounds = WeightGradientBounds.active()
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_t = grad.transpose(1, 2)
            if 4 * weight.shape[1] <= weight.shape[2]:
                grad_t = grad_t.contiguous()
            grad_weight = torch.bmm(grad_t, x)
            if ctx.bounds is not None and weight.shape[1] * weight.shape[2] >= ctx.bounds.min_numel:
                per_sample = torch.linalg.vector_norm(grad, dim=2).mul_(torch.linalg.vector_norm(x, dim=2))
                ctx.bounds.add(grad_weight, per_sample.sum(1))
        grad_bias = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, params: Params, name: str) -> torch.Tensor:
    """``nn.Linear`` ``name`` on ``x`` ``[K, N, in]``: ``[K, N, out]``."""
    return matmul(x, params[f"{name}.weight"], params.get(f"{name}.bias"))


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weightᵀ + bias`` over the leading ``K`` axis (see :class:`StackedLinear`)."""
    if torch.is_autocast_enabled(x.device.type):  # autocast casts the built-in products, not a Function's
        out = torch.bmm(x, weight.transpose(1, 2))
        return out if bias is None else out + bias.unsqueeze(1).to(out.dtype)
    return StackedLinear.apply(x, weight, bias)


def layer_norm(x: torch.Tensor, params: Params, name: str, eps: float = 1e-5) -> torch.Tensor:
    """``nn.LayerNorm`` ``name`` over the last axis of ``x`` ``[K, N, width]``."""
    normed = F.layer_norm(x, x.shape[-1:], eps=eps)
    return torch.addcmul(params[f"{name}.bias"].unsqueeze(1), normed, params[f"{name}.weight"].unsqueeze(1))


def standardize(x: torch.Tensor, buffers: Params, name: str) -> torch.Tensor:
    """:class:`~a2vgen.nn.standardize.Standardizer` ``name`` on ``x`` ``[K, N, *shape]``."""
    return (x - buffers[f"{name}.mean"].unsqueeze(1)) / buffers[f"{name}.std"].unsqueeze(1)


def conditioned_mlp(x: torch.Tensor, c: torch.Tensor | None, params: Params, name: str) -> torch.Tensor:
    """:class:`~a2vgen.nn.cvae.ConditionedMLP` ``name`` on ``x`` ``[K, N, in]`` and ``c`` ``[K, N, cond]``."""
    h = linear(x, params, f"{name}.input")
    if c is not None:
        h = h + matmul(c, params[f"{name}.input.cond_weight"])
    h = F.silu(layer_norm(h, params, f"{name}.body.0"))
    h = F.silu(layer_norm(linear(h, params, f"{name}.body.2"), params, f"{name}.body.3"))
    return linear(h, params, f"{name}.body.5")


def attention_pool(x: torch.Tensor, params: Params, name: str) -> torch.Tensor:
    """:class:`~a2vgen.nn.conditioning.AttentionPool` ``name`` on token states ``x`` ``[K, N, S, D]``."""
    k, n, s, d = x.shape
    h = linear(x.reshape(k, n * s, d), params, f"{name}.proj")
    score = linear(torch.tanh(h), params, f"{name}.score").view(k, n, s, 1)
    h = h.view(k, n, s, -1)
    pooled = (torch.softmax(score, dim=2) * s * h).sum(dim=2)
    return layer_norm(pooled, params, f"{name}.norm")


def condition_encoder(
    cond: list[torch.Tensor], shapes: list[list[int]], params: Params, buffers: Params, name: str
) -> torch.Tensor:
    """:class:`~a2vgen.nn.conditioning.ConditionEncoder` ``name`` (its ``cond_shapes``: ``shapes``) on
    conditioning tensors ``[K, N, *shape]``: ``[K, N, width]``."""
    if len(cond) != len(shapes):
        raise ValueError(f"expected {len(shapes)} conditioning tensors, got {len(cond)}")
    parts = []
    for i, (c, shape) in enumerate(zip(cond, shapes)):
        c = standardize(c, buffers, f"{name}.standardize.{i}")
        branch = f"{name}.branches.{i}"
        parts.append(attention_pool(c, params, branch) if len(shape) == 2 else linear(c, params, branch))
    return linear(F.silu(torch.cat(parts, dim=-1)), params, f"{name}.out.1")
