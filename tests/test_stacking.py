"""Stacked training (a visit's generators as one vmapped step) gives the results of training them apart."""

import logging

import pytest
import torch

from a2vgen.callbacks import ClassChangeResetCallback
from a2vgen.data.sampler import KeyGroupedBatchSampler
from a2vgen.modules import FlowPerClassGenerator, PerClassGenerator, PerGroupGenerator
from a2vgen.modules import stacking as stacking_module
from a2vgen.modules.stacking import StackedNetworks
from a2vgen.modules.steps import key_groups
from conftest import module_for, small_datamodule
from federation_helpers import federated_fit
from test_paging import optimizer_states
from test_resume import CLIENTS, OPTIONS

# The attention pool's score bias shifts every token's score alike, which the softmax ignores: its gradient
# is zero up to rounding, and AdamW turns any rounding into full-size steps. Nothing the network computes
# depends on it, so it is the one tensor compared only for being finite.
SHIFT_INVARIANT = "score.bias"


class NoiselessPerClass(PerClassGenerator):
    """Draws no random inputs, so that runs whose batches come in another order stay comparable."""

    def draw_noise(self, net, audio):
        return {"eps": torch.zeros(audio.shape[0], net.latent_dim)}


@pytest.fixture
def stacked_calls(monkeypatch):
    """Counts the vmapped forward passes of stacked generators."""
    calls = []
    call = StackedNetworks.__call__

    def counted(self, positions, args, kwargs):
        calls.append(list(positions))
        return call(self, positions, args, kwargs)

    monkeypatch.setattr(stacking_module.StackedNetworks, "__call__", counted)
    return calls


def run(cls, stack, shared=True, batch_size=8):
    dm = small_datamodule(CLIENTS, batch_size=batch_size)
    module = module_for(cls, dm, input_noise=0.2)
    options = dict(OPTIONS, shared_generators=shared, aggregation="none" if shared else "fedavg")
    trainer = federated_fit(
        module, dm, callbacks=[ClassChangeResetCallback(scope="client")], stack_generators=stack, **options
    )
    return trainer, module


def assert_same_results(apart, stacked, rtol=1e-4, atol=2e-6):
    for (name, a), b in zip(apart.state_dict().items(), stacked.state_dict().values()):
        if name.endswith(SHIFT_INVARIANT):
            assert bool(torch.isfinite(b).all()), name
        elif name.endswith("data_basis"):  # directions of a covariance: each one's sign is arbitrary
            cov_a, cov_b = a.transpose(-1, -2) @ a, b.transpose(-1, -2) @ b
            torch.testing.assert_close(cov_b, cov_a, rtol=rtol, atol=atol * float(cov_a.abs().max()), msg=name)
        elif a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=name)
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "fedavg"])
def test_stacked_training_equals_training_apart_batch_for_batch(stacked_calls, shared):
    """Several batches per key and epoch, classes joining (with resets), shared or FedAvg: every weight,
    buffer (calibration, age, seen classes) and AdamW moment matches training the generators apart."""
    apart_trainer, apart = run(NoiselessPerClass, stack=False, shared=shared)
    assert not stacked_calls
    stacked_trainer, stacked = run(NoiselessPerClass, stack=True, shared=shared)
    assert len(stacked_calls) > 10 and max(len(p) for p in stacked_calls) == 2  # two classes per client visit
    assert_same_results(apart, stacked)
    a, b = optimizer_states(apart_trainer), optimizer_states(stacked_trainer)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for index in x:
            for part in x[index]:
                if part != "step":
                    torch.testing.assert_close(y[index][part], x[index][part], rtol=1e-3, atol=1e-6)


def test_stacked_training_draws_the_same_noise_when_each_key_has_one_batch(stacked_calls):
    """With one batch per key and epoch (ESC-50's case: 32 clips, batch 64) the random inputs come in the
    same order as apart, so even the noisy default module trains to the same weights."""
    _, apart = run(PerClassGenerator, stack=False, batch_size=64)
    _, stacked = run(PerClassGenerator, stack=True, batch_size=64)
    assert stacked_calls
    assert_same_results(apart, stacked)


def test_stacking_ends_with_every_parameter_in_its_own_storage():
    trainer, module = run(PerClassGenerator, stack=True)
    params = list(module.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)
    assert all(p.grad is None or p.grad._base is None for p in params)
    assert not module._stacks
    size = sum(p.numel() for p in module.bank["dog"].parameters())
    assert sum(p.untyped_storage().nbytes() for p in module.bank["dog"].parameters()) == 4 * size


def test_what_cannot_stack_trains_apart(stacked_calls):
    dm = small_datamodule(CLIENTS)
    flow = module_for(FlowPerClassGenerator, dm)
    with flow.stacking(flow.generator_keys) as stacked:
        assert not stacked  # its own compute_loss: trained one at a time
    adapter = module_for(PerClassGenerator, dm, train_adapter=True)
    with adapter.stacking(adapter.generator_keys) as stacked:
        assert not stacked  # the adapter's batches would change
    groups = module_for(PerGroupGenerator, dm, class_groups={"a": ["dog", "rain", "rooster"], "b": ["sea_waves"]})
    with groups.stacking(groups.generator_keys) as stacked:
        assert not stacked  # groups of 3 and 1 classes: calibrations of other shapes
    federated_fit(flow, dm, max_rounds=1)
    assert not stacked_calls


def test_rows_give_every_key_its_own_batches_in_the_same_order():
    keys = torch.tensor([0] * 7 + [1] * 3 + [2] * 12 + [1] * 2)
    for epoch in range(3):
        plain = KeyGroupedBatchSampler(keys, len(keys), 4, seed=5)
        rows = KeyGroupedBatchSampler(keys, len(keys), 4, seed=5, stack_keys=True)
        plain.set_epoch(epoch)
        rows.set_epoch(epoch)
        per_key_plain, per_key_rows = {}, {}
        for batch in plain:
            per_key_plain.setdefault(int(keys[batch[0]]), []).append(batch)
        seen = list(rows)
        assert len(seen) == len(rows) == 3  # key 2 has three batches
        for row in seen:
            runs = torch.unique_consecutive(keys[row]).tolist()
            assert len(runs) == len(set(runs))  # each key once, contiguous
            for key in runs:
                per_key_rows.setdefault(key, []).append([i for i in row if int(keys[i]) == key])
        assert per_key_rows == per_key_plain


def test_a_parameter_given_new_storage_leaves_its_stack_with_a_warning(caplog):
    dm = small_datamodule(CLIENTS)
    module = module_for(PerClassGenerator, dm)
    module.train()
    with module.stacking(["dog", "rain"]) as stacked:
        assert stacked
        stack, _ = module._stacks[module.bank["dog"].net]
        assert stack.valid()
        weight = module.bank["rain"].net.decoder.input.weight
        weight.data = weight.data.clone()
        assert not stack.valid()
        dm.set_key_map(module.class_to_key, module.generator_keys)
        batch = next(iter(dm.client("1").dataloader("train", ["dog", "rain"], stack_keys=True)))
        with caplog.at_level(logging.WARNING):
            loss, stats = module.shared_step(batch)
        assert "trains apart from now on" in caplog.text and not module._stacks
        assert set(stats) == {"dog", "rain"} and bool(torch.isfinite(loss))


@pytest.mark.parametrize("micro_steps", [1, 2], ids=["one", "accumulated"])
def test_each_stacked_generator_is_clipped_on_its_own(micro_steps):
    """Clipping acts on every generator's own gradient, also when gradients accumulate over steps (then
    they are no longer slices of the stack)."""
    dm = small_datamodule(CLIENTS)
    module = module_for(PerClassGenerator, dm, grad_clip=1e-3)
    dm.set_key_map(module.class_to_key, module.generator_keys)
    module.train()
    batch = next(iter(dm.client("1").dataloader("train", ["dog", "rain"], stack_keys=True)))
    with module.stacking(["dog", "rain"]):
        for _ in range(micro_steps):
            loss, stats = module.shared_step(batch)
            module.backward(loss)
        module._stepped_keys = list(stats)
        norms = {k: torch.nn.utils.get_total_norm([p.grad for p in module.bank[k].parameters()]) for k in stats}
        assert all(float(n) > 1e-2 for n in norms.values())
        module.configure_gradient_clipping(None)
        for key in stats:
            norm = torch.nn.utils.get_total_norm([p.grad for p in module.bank[key].parameters()])
            torch.testing.assert_close(norm, torch.tensor(1e-3), rtol=1e-3, atol=0)


class SharedTemperature(NoiselessPerClass):
    """Scales every generator's loss by one learned temperature: a parameter outside the generators."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_temperature = torch.nn.Parameter(torch.tensor(0.3))

    def loss_parts(self, net, outputs, audio, cond, age, cond_index=None):
        parts = super().loss_parts(net, outputs, audio, cond, age, cond_index)
        parts["loss"] = parts["loss"] * self.log_temperature.exp() - self.log_temperature
        return parts


def test_stacked_backward_reaches_a_lone_generator_and_parameters_outside_the_generators():
    """A stacked generator whose key holds fewer samples than the others in a batch runs apart in that
    step, and the module's own parameter gets gradients from every key: both as without stacking."""
    dm = small_datamodule(CLIENTS)
    module = module_for(SharedTemperature, dm)
    module.train()
    keys = ["dog", "rain", "rooster"]
    class_idx = torch.tensor([dm.classes.index(k) for k in keys for _ in range(3)][:8])
    batch = {  # three samples each of dog and rain, two of rooster: rooster's generator runs alone
        "audio": torch.randn(8, *dm.audio_shape, generator=torch.Generator().manual_seed(1)),
        "cond": [c[class_idx].clone() for c in dm.class_cond],
        "class_idx": class_idx,
        "index": torch.arange(8),
    }

    def gradients(stack: bool) -> dict[str, torch.Tensor]:
        module.zero_grad(set_to_none=True)
        with module.stacking(keys if stack else []):
            loss, _ = module.shared_step(batch)
            module.backward(loss)
            return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}

    apart, stacked = gradients(stack=False), gradients(stack=True)
    rooster = f"bank.slots.{module.bank.keys.index('rooster')}.net."
    assert "log_temperature" in stacked and any(name.startswith(rooster) for name in stacked)
    assert stacked.keys() == apart.keys()
    for name, grad in apart.items():
        torch.testing.assert_close(stacked[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_stacks_batched_loss_equals_each_generators_own():
    """Every loss part of the batched scoring (one call for the stack) equals the generator's own
    ``loss_parts``, generators of different ages (KL warm-up) included; a subclass's own ``loss_parts`` is
    never bypassed."""
    dm = small_datamodule(CLIENTS)
    module = module_for(PerClassGenerator, dm, beta_warmup_epochs=4)
    module.eval()  # the scoring alone: no calibration or latent tracking
    keys = ["dog", "rain", "rooster"]
    for age, key in enumerate(keys):
        module.bank[key].age.fill_(age + 1)
    g = torch.Generator().manual_seed(0)
    recon, target, cond_mean = (torch.randn(3, 6, *dm.audio_shape, generator=g) for _ in range(3))
    mu, logvar = torch.randn(3, 6, 5, generator=g), torch.randn(3, 6, 5, generator=g)
    outputs = (recon, mu, logvar, target, cond_mean)  # three generators' stacked outputs, 6 samples each
    inputs = [(module.bank[k], None, None, None) for k in keys]
    batched = module.stacked_loss_parts(inputs, outputs)
    for k, (slot, *_) in enumerate(inputs):
        own = module.loss_parts(slot.net, tuple(t[k] for t in outputs), target[k], None, slot.age, None)
        assert batched[k].keys() == own.keys()
        for name in own:
            torch.testing.assert_close(batched[k][name], own[name], rtol=1e-5, atol=1e-5, msg=name)
    assert len({float(parts["loss"].mean()) for parts in batched}) == 3
    assert module_for(SharedTemperature, dm).stacked_loss_parts(inputs, outputs) is None


def test_a_key_grouped_batch_is_cut_into_views():
    """Each key's samples in one run: the keys' samples are slices of the batch (views, not copies); keys
    whose samples interleave get boolean masks."""
    slot_idx = torch.tensor([2] * 3 + [0] * 3 + [1] * 2)
    groups = key_groups(slot_idx)
    assert [s for s, _ in groups] == [2, 0, 1] and all(isinstance(m, slice) for _, m in groups)
    audio = torch.randn(8, 2, 5)
    for s, selection in groups:
        shares = audio[selection].untyped_storage().data_ptr() == audio.untyped_storage().data_ptr()
        assert shares and torch.equal(audio[selection], audio[slot_idx == s])
    interleaved = key_groups(torch.tensor([0, 1, 0, 1]))
    assert [s for s, _ in interleaved] == [0, 1] and all(m.dtype == torch.bool for _, m in interleaved)
    assert key_groups(torch.tensor([4, 4])) == [(4, None)]
