"""The hand-written batched forward of the default VAE (``ConditionalVAE.stacked_forward``) is each network's
own forward, with the same gradients, and only a network class that defines it gets it."""

import pytest
import torch

from a2vgen.modules import stacking as stacking_module
from a2vgen.modules.stacking import StackedNetworks
from a2vgen.nn import stacked
from a2vgen.nn.cvae import ConditionalVAE
from test_stacking import SHIFT_INVARIANT

K, B, ROWS = 3, 5, 2


def networks(cond_shapes, cls=ConditionalVAE):
    torch.manual_seed(0)
    nets = [cls([4, 16], cond_shapes, hidden_dim=32, latent_dim=8, cond_width=8) for _ in range(K)]
    for net in nets:  # statistics and a class-mean head that are not the identity and zero
        class_cond = [torch.randn(4, *shape) for shape in cond_shapes]
        net.set_statistics(torch.randn(4, 16), torch.rand(4, 16) + 0.5, class_cond or None)
        if net.mean_head is not None:
            torch.nn.init.normal_(net.mean_head.weight, std=0.1)
    return nets


def inputs(cond_shapes, indexed, noised):
    x = torch.randn(K, B, 4, 16)
    cond = [torch.randn(K, ROWS if indexed else B, *shape) for shape in cond_shapes] or None
    kwargs = {"eps": torch.randn(K, B, 8)}
    if noised:
        kwargs["encoder_input"] = x + 0.1 * torch.randn_like(x)
    if indexed and cond:
        kwargs["cond_index"] = torch.randint(ROWS, (K, B))
    return x, cond, kwargs


def squares(outputs) -> torch.Tensor:
    return sum(o.square().sum() for o in outputs)


CASES = {
    "text-rows": ([[6, 8]], True, True),
    "text-and-pooled-per-sample": ([[6, 8], [5]], False, True),
    "unconditioned": ([], False, False),
}


@pytest.mark.parametrize("cond_shapes,indexed,noised", list(CASES.values()), ids=list(CASES))
def test_stacked_forward_is_each_networks_forward_with_its_gradients(cond_shapes, indexed, noised):
    nets = networks(cond_shapes)
    x, cond, kwargs = inputs(cond_shapes, indexed, noised)
    stack = StackedNetworks(nets)
    out = stack(list(range(K)), (x, cond), kwargs)
    names = list(stack.params)
    grads = dict(zip(names, torch.autograd.grad(squares(out), [stack.params[n] for n in names], allow_unused=True)))
    stack.release()
    for k, net in enumerate(nets):
        mine = {name: value[k] for name, value in kwargs.items()}
        ref = net(x[k], None if cond is None else [c[k] for c in cond], **mine)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a[k], b, rtol=1e-5, atol=1e-5)
        squares(ref).backward()
        for name, p in net.named_parameters():
            if grads[name] is None:
                assert p.grad is None or not bool(p.grad.any()), name
            elif not name.endswith(SHIFT_INVARIANT):  # rounding noise (see test_stacking)
                torch.testing.assert_close(grads[name][k], p.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_stacked_forward_runs_under_autocast():
    nets = networks([[6, 8]])
    x, cond, kwargs = inputs([[6, 8]], indexed=True, noised=True)
    stack = StackedNetworks(nets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stack(list(range(K)), (x, cond), kwargs)
    assert out.recon.dtype == torch.bfloat16
    grads = torch.autograd.grad(squares(out).float(), list(stack.params.values()), allow_unused=True)
    assert all(g is None or (g.dtype == torch.float32 and bool(torch.isfinite(g).all())) for g in grads)
    exact = stack(list(range(K)), (x, cond), kwargs)
    torch.testing.assert_close(out.recon.float(), exact.recon, rtol=0.1, atol=0.1)


class RescaledVAE(ConditionalVAE):
    """Another forward, inherited ``stacked_forward``: stacking must not use the parent's."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        return out._replace(recon=2 * out.recon)


@pytest.mark.parametrize("cls,hand_written", [(ConditionalVAE, True), (RescaledVAE, False)], ids=["own", "inherited"])
def test_only_a_class_that_defines_stacked_forward_runs_it(monkeypatch, cls, hand_written):
    vmapped = []
    vmap = stacking_module.vmap
    monkeypatch.setattr(stacking_module, "vmap", lambda f: vmapped.append(f) or vmap(f))
    nets = networks([[6, 8]], cls)
    x, cond, kwargs = inputs([[6, 8]], indexed=True, noised=True)
    out = StackedNetworks(nets)(list(range(K)), (x, cond), kwargs)
    assert bool(vmapped) != hand_written
    ref = nets[1](x[1], [c[1] for c in cond], **{name: value[1] for name, value in kwargs.items()})
    torch.testing.assert_close(out.recon[1], ref.recon, rtol=1e-5, atol=1e-5)


def test_a_subset_of_a_stack_runs_with_its_own_networks():
    """Positions ``[0, 2]`` of three (some generators absent from a batch), a ``[D]`` conditioning tensor picked
    by ``cond_index``: each output and gradient is that network's own."""
    shapes = [[6, 8], [5]]
    nets = networks(shapes)
    x, cond, kwargs = inputs(shapes, indexed=True, noised=True)
    x, cond, kwargs = x[:2], [c[:2] for c in cond], {name: value[:2] for name, value in kwargs.items()}
    stack = StackedNetworks(nets)
    out = stack([0, 2], (x, cond), kwargs)
    grads = torch.autograd.grad(squares(out), list(stack.params.values()), allow_unused=True)
    grads = dict(zip(stack.params, grads))
    stack.release()
    for j, k in enumerate([0, 2]):
        ref = nets[k](x[j], [c[j] for c in cond], **{name: value[j] for name, value in kwargs.items()})
        torch.testing.assert_close(out.recon[j], ref.recon, rtol=1e-5, atol=1e-5)
        squares(ref).backward()
        for name, p in nets[k].named_parameters():
            if not name.endswith(SHIFT_INVARIANT):
                torch.testing.assert_close(grads[name][k], p.grad, rtol=1e-4, atol=1e-4, msg=name)
    assert not bool(grads["decoder.body.5.weight"][1].any())  # the absent network gets no gradient


def test_a_stacked_forward_stacks_the_buffers_it_reads_and_restacks_only_those_that_changed():
    """The standardizations are read; the calibration and the latent fit, which training changes every step,
    are not, and a changed standardization is read anew."""
    nets = networks([[6, 8]])
    x, cond, kwargs = inputs([[6, 8]], indexed=True, noised=True)
    stack = StackedNetworks(nets)
    stack(list(range(K)), (x, cond), kwargs)
    assert set(stack._buffers) == {"audio_norm.mean", "audio_norm.std", "cond_encoder.standardize.0.mean",
                                   "cond_encoder.standardize.0.std"}  # fmt: skip
    first = stack._buffers["audio_norm.mean"][1]
    nets[1].latent_mean.add_(1.0)
    stack(list(range(K)), (x, cond), kwargs)
    assert stack._buffers["audio_norm.mean"][1] is first  # unchanged: not stacked again
    nets[1].audio_norm.mean.add_(1.0)
    out = stack(list(range(K)), (x, cond), kwargs)
    stack.release()
    ref = nets[1](x[1], [c[1] for c in cond], **{name: value[1] for name, value in kwargs.items()})
    torch.testing.assert_close(out.target[1], ref.target)


@pytest.mark.parametrize("samples", [1, 7])
def test_weight_gradient_bounds_cover_the_norms_and_hold_for_the_gradient_they_were_recorded_for(samples):
    """A stacked linear layer's recorded bound is at least its weight gradient's norm, per network (equal for
    one sample); a weight used twice, or a gradient changed in place, has no bound."""
    torch.manual_seed(0)
    x, target = torch.randn(K, samples, 9), torch.randn(K, samples, 4)
    weight = torch.randn(K, 4, 9, requires_grad=True)
    bounds = stacked.WeightGradientBounds(min_numel=36)
    with bounds.recording():
        out = stacked.matmul(x, weight)
    (grad,) = torch.autograd.grad((out * target).sum(), [weight])
    norms = torch.linalg.vector_norm(grad.flatten(1), dim=1)
    bound = bounds.bound(grad)
    assert bound is not None and bool((bound >= norms * (1 - 1e-6)).all())
    if samples == 1:
        torch.testing.assert_close(bound, norms)
    else:
        assert bool((bound > 1.1 * norms).all())  # the bound of many samples is loose: a real bound, not the norm
    grad.mul_(2.0)
    assert bounds.bound(grad) is None  # changed since it was recorded

    bounds.min_numel = 37
    with bounds.recording():
        out = stacked.matmul(x, weight)
    (grad,) = torch.autograd.grad((out * target).sum(), [weight])
    assert bounds.bound(grad) is None  # too small to bound
    bounds.min_numel = 36

    with bounds.recording():
        out = stacked.matmul(x, weight) + stacked.matmul(2 * x, weight)
    (grad,) = torch.autograd.grad((out * target).sum(), [weight])
    assert bounds.bound(grad) is None  # the sum of two gradients: neither one's bound is its bound


def test_stacked_clipping_bounds_each_networks_norm_and_clips_only_networks_over_the_limit():
    """The default VAE's stacked step records bounds for its large weight gradients; each network's bounded
    norm is at least its exact norm. With a limit above the bounds, or between the norms and the bounds,
    clipping changes nothing; with one below the norms, every network is clipped to it."""
    nets = networks([[6, 8]])
    x, cond, kwargs = inputs([[6, 8]], indexed=True, noised=True)
    for limit in ("above the bounds", "between", "below the norms"):
        stack = StackedNetworks(nets)
        stack.grad_bounds.min_numel = 2048  # of these small networks' weights, the 32 x 64 and 64 x 32 ones
        out = stack(list(range(K)), (x, cond), kwargs)
        stack.distribute_grads(dict(zip(stack.params, torch.autograd.grad(squares(out), list(stack.params.values())))))
        exact = torch.stack([torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]) for net in nets])
        bounds = stack.norm_bounds()
        bounded = [name for name, g in stack.grads.items() if stack.grad_bounds.bound(g) is not None]
        assert sorted(bounded) == ["decoder.body.5.weight", "encoder.input.weight"]
        assert bounds is not None and bool((bounds >= exact * (1 - 1e-5)).all()) and bool((bounds > exact).any())
        before = [p.grad.clone() for net in nets for p in net.parameters()]
        max_norm = {"above the bounds": float(bounds.max()) * 1.01, "between": float(exact.max()) * 1.01}.get(
            limit, float(exact.min()) / 2
        )
        assert (limit == "above the bounds") == (max_norm > float(bounds.max()))
        stack.clip_grads(max_norm)
        if limit == "below the norms":
            for net in nets:
                norm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()])
                torch.testing.assert_close(norm, torch.tensor(max_norm), rtol=1e-4, atol=0)
        else:
            assert all(torch.equal(p.grad, b) for p, b in zip((p for net in nets for p in net.parameters()), before))
        stack.release()
