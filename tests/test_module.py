"""The generator modules: batches, updates, reset exactness through Trainer.fit, checkpoints, bad input."""

import copy

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from a2vgen.modules import CheckpointMismatchError, PerClassGenerator, PerGroupGenerator, UnifiedGenerator
from conftest import make_batch, small_module

CLASSES = ["dog", "rooster", "cat", "cow", "rain"]


class ZeroNoiseGenerator(PerClassGenerator):
    """A subclass that overrides the loss hook: deterministic latent (z = mu), so updates are comparable."""

    def compute_loss(self, net, audio, cond, age, cond_index=None):
        recon, mu, logvar, *_ = net(audio, cond, eps=torch.zeros(audio.shape[0], net.latent_dim), cond_index=cond_index)
        mse = (recon - audio).pow(2).flatten(1).mean(1)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(1)
        return {
            "loss": mse + self.schedule.beta(age) * kl,
            "mse": mse,
            "kl": kl,
            "cos": torch.zeros_like(mse),
        }


def fit(module, batches, epochs=1, callbacks=()):
    trainer = Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


def params(module, key):
    return [p.detach().clone() for p in module.bank[key].parameters()]


def test_mixed_batch_updates_each_key_as_its_own_samples_would():
    mixed = make_batch([0, 1, 0, 2, 1, 0])
    dog_only = {k: (v[[0, 2, 5]] if torch.is_tensor(v) else [c[[0, 2, 5]] for c in v]) for k, v in mixed.items()}
    a = small_module(ZeroNoiseGenerator, CLASSES, input_noise=0.0)
    b = small_module(ZeroNoiseGenerator, CLASSES, input_noise=0.0)
    fit(a, [mixed])
    fit(b, [dog_only])
    for pa, pb in zip(params(a, "dog"), params(b, "dog")):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_mixed_batch_of_three_classes_changes_exactly_three_generators():
    module = small_module(PerClassGenerator, CLASSES)
    before = {k: params(module, k) for k in CLASSES}
    fit(module, [make_batch([0, 1, 4, 4, 0, 1])])
    changed = {k for k in CLASSES if any(not torch.equal(p, q) for p, q in zip(before[k], params(module, k)))}
    assert changed == {"dog", "rooster", "rain"}
    assert module.seen_classes("rain") == ["rain"] and module.seen_classes("cat") == []


def test_initialisation_depends_on_seed_and_key_only():
    a = small_module(PerClassGenerator, ["dog", "rooster"])
    b = small_module(PerClassGenerator, ["cat", "rooster", "cow"])
    c = small_module(PerClassGenerator, ["rooster"], seed=1)
    assert all(torch.equal(p, q) for p, q in zip(params(a, "rooster"), params(b, "rooster")))
    assert not torch.equal(params(a, "rooster")[0], params(c, "rooster")[0])


class ResetAtEpoch(Callback):
    def __init__(self, epoch, keys):
        self.epoch, self.keys = epoch, keys

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            module.reset_generators(self.keys)


def adam_state(trainer, module, key):
    opt = trainer.optimizers[0]
    return [opt.state.get(p, {}) for p in module.bank[key].parameters()]


def test_reset_through_fit_matches_a_fresh_module_and_leaves_other_keys_untouched():
    dog, rooster = make_batch([0, 0, 0, 0], seed=1), make_batch([1, 1, 1], seed=2)
    batches = [dog, rooster, dog, rooster]

    reset = small_module(ZeroNoiseGenerator, CLASSES, input_noise=0.0)
    t_reset = fit(reset, batches, epochs=3, callbacks=[ResetAtEpoch(2, ["rooster"])])
    plain = small_module(ZeroNoiseGenerator, CLASSES, input_noise=0.0)
    t_plain = fit(plain, batches, epochs=3)
    fresh = small_module(ZeroNoiseGenerator, CLASSES, input_noise=0.0)
    t_fresh = fit(fresh, [rooster, rooster], epochs=1)

    # the reset key follows a freshly built module with a fresh optimizer trained on the same batches
    for p, q in zip(params(reset, "rooster"), params(fresh, "rooster")):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    for s, f in zip(adam_state(t_reset, reset, "rooster"), adam_state(t_fresh, fresh, "rooster")):
        assert float(s["step"]) == float(f["step"]) == 2
        torch.testing.assert_close(s["exp_avg"], f["exp_avg"])
        torch.testing.assert_close(s["exp_avg_sq"], f["exp_avg_sq"])
    assert int(reset.bank["rooster"].age) == int(fresh.bank["rooster"].age) == 1
    assert float(adam_state(t_plain, plain, "rooster")[0]["step"]) == 6
    # every other key: weights, optimizer state, age and seen classes bit for bit as without the reset
    for p, q in zip(params(reset, "dog"), params(plain, "dog")):
        assert torch.equal(p, q)
    for s, f in zip(adam_state(t_reset, reset, "dog"), adam_state(t_plain, plain, "dog")):
        assert torch.equal(s["exp_avg"], f["exp_avg"]) and torch.equal(s["step"], f["step"])
    assert int(reset.bank["dog"].age) == int(plain.bank["dog"].age) == 3
    assert reset.seen_classes("dog") == ["dog"]


def test_reset_of_untrained_generator_is_harmless():
    module = small_module(PerClassGenerator, CLASSES)
    before = params(module, "cow")
    assert module.reset_generators(["cow"]) == ["cow"]
    assert all(torch.equal(p, q) for p, q in zip(before, params(module, "cow")))


def test_subclass_overrides_the_network_factory():
    class WideGenerator(UnifiedGenerator):
        def build_network(self, key):
            net = super().build_network(key)
            net.tag = f"wide:{key}"
            return net

    module = small_module(WideGenerator, CLASSES)
    fit(module, [make_batch([0, 1, 2])])
    assert module.bank["unified"].net.tag == "wide:unified"
    assert module.sample("dog", 3).shape == (3, 4, 16)


def test_checkpoint_round_trip_restores_everything(tmp_path):
    module = small_module(PerGroupGenerator, CLASSES, class_groups={"animals": ["dog", "rooster", "cat", "cow"]})
    trainer = fit(module, [make_batch([0, 1, 4]), make_batch([2, 4])], epochs=2)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # nothing in it needs unpickling code
    loaded = PerGroupGenerator.load_from_checkpoint(path, weights_only=True)
    assert loaded.generator_keys == ["animals", "other"] and loaded.class_groups == module.class_groups
    assert loaded.seen_classes("animals") == ["dog", "rooster", "cat"]
    assert int(loaded.bank["other"].age) == 2
    for p, q in zip(module.parameters(), loaded.parameters()):
        assert torch.equal(p, q)
    steps = [float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()]
    assert steps and set(steps) <= {2.0, 4.0}
    torch.testing.assert_close(loaded.class_cond_0, module.class_cond_0)


def test_checkpoint_of_another_configuration_names_the_mismatch(tmp_path):
    module = small_module(PerClassGenerator, CLASSES)
    trainer = fit(module, [make_batch([0])])
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    with pytest.raises(
        CheckpointMismatchError, match="granularity: checkpoint has 'per_class', this module has 'unified'"
    ):
        UnifiedGenerator.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    other_dims = small_module(PerClassGenerator, CLASSES, audio_shape=[4, 32])
    with pytest.raises(
        CheckpointMismatchError, match=r"audio_shape: checkpoint has \[4, 16\], this module has \[4, 32\]"
    ):
        other_dims.on_load_checkpoint(copy.deepcopy(ckpt))
    older = copy.deepcopy(ckpt)  # tensors of an earlier version's network: named, not a load_state_dict wall
    older["state_dict"] = {k.replace("calibration.data_mean", "mean_shift"): v for k, v in ckpt["state_dict"].items()}
    with pytest.raises(
        CheckpointMismatchError, match=r"missing: \['bank.slots.0.net.calibration.data_mean'.*another version"
    ):
        module.on_load_checkpoint(older)


def test_bad_batches_are_named():
    module = small_module(PerClassGenerator, CLASSES)
    batch = make_batch([0, 1, 2])
    bad = dict(batch, audio=batch["audio"].clone())
    bad["audio"][1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf in 'audio' of sample 1 \(class 'rooster'\)"):
        module.shared_step(bad)
    wrong = dict(batch, audio=torch.randn(3, 4, 32))
    with pytest.raises(ValueError, match=r"audio embeddings have shape \[4, 32\], module expects \[4, 16\]"):
        module.shared_step(wrong)
    wrong_cond = dict(batch, cond=[torch.randn(3, 6, 9)])
    with pytest.raises(ValueError, match="conditioning shapes"):
        module.shared_step(wrong_cond)


def test_gradients_are_clipped_per_generator_only_above_the_limit():
    module = small_module(PerClassGenerator, CLASSES, objective="original")  # raw-scale MSE: big inputs, big gradients
    batch = make_batch([0, 0, 1, 1])
    batch["audio"][2:] *= 20  # rooster's samples give a far larger gradient than dog's
    loss, stats = module.shared_step(batch)
    loss.backward()
    module._stepped_keys = list(stats)
    grads = {k: [p.grad.clone() for p in module.bank[k].parameters()] for k in ("dog", "rooster")}
    norms = {k: float(torch.nn.utils.get_total_norm(g)) for k, g in grads.items()}
    assert norms["rooster"] > 2 * norms["dog"]
    module.hparams.grad_clip = (norms["dog"] + norms["rooster"]) / 2
    module.configure_gradient_clipping(None)
    for before, p in zip(grads["dog"], module.bank["dog"].parameters()):
        assert torch.equal(before, p.grad)  # under the limit: untouched, whatever the other key's norm
    after = [p.grad for p in module.bank["rooster"].parameters()]
    assert float(torch.nn.utils.get_total_norm(after)) == pytest.approx(module.hparams.grad_clip, rel=1e-4)
    for before, now in zip(grads["rooster"], after):
        torch.testing.assert_close(now, before * module.hparams.grad_clip / norms["rooster"], rtol=1e-4, atol=1e-7)


def test_banks_for_many_owners_equal_fresh_builds_and_share_no_storage():
    module = small_module(PerClassGenerator, CLASSES)
    banks = module.build_banks({"a": ["dog", "cat"], "b": ["dog"], "c": ["rain"]})
    assert [banks[o].keys for o in "abc"] == [["dog", "cat"], ["dog"], ["rain"]]
    for owner, bank in banks.items():
        fresh = module.build_bank(bank.keys).state_dict()
        state = bank.state_dict()
        assert state.keys() == fresh.keys()
        for name, value in fresh.items():
            assert torch.equal(state[name], value), (owner, name)
    pointers = [p.data_ptr() for bank in banks.values() for p in bank.parameters()]
    assert len(pointers) == len(set(pointers))  # every owner trains its own copy
    assert banks["c"].slot_of_class.tolist() == [-1, -1, -1, -1, 0]
