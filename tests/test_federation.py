"""Federated training through FederatedTrainer.fit: sharing, reset scopes, aggregation, memory, modes."""

import logging

import pytest
import torch
from torch import nn

from a2vgen.callbacks import ClassChangeResetCallback
from a2vgen.data.clients import ClientSpec
from a2vgen.federation import federation_of
from a2vgen.federation.aggregation import weighted_average
from a2vgen.modules import PerClassGenerator, PerGroupGenerator, UnifiedGenerator
from conftest import module_for, small_datamodule, small_demo
from federation_helpers import Recorder, all_equal, federated_fit, weights

NOTE_CLIENT = ClientSpec("0", schedule={1: ["dog"], 3: ["dog", "rooster"]})


@pytest.mark.parametrize(
    ("cls", "kwargs", "round3_keys"),
    [
        (PerClassGenerator, {}, ["rooster"]),
        (PerGroupGenerator, {"class_groups": {"mammals": ["dog"], "birds": ["rooster"]}}, ["birds"]),
        (UnifiedGenerator, {}, ["unified"]),
    ],
)
def test_original_note_scenario_resets_what_the_granularity_says(cls, kwargs, round3_keys, caplog):
    dm = small_datamodule([NOTE_CLIENT])
    module = module_for(cls, dm, **kwargs)
    reset = ClassChangeResetCallback()
    recorder = Recorder(keys=module.generator_keys)
    trainer = federated_fit(module, dm, callbacks=[reset, recorder], max_rounds=3)
    assert [(e["round"], e["classes"], e["keys"]) for e in reset.events] == [
        (1, ["dog"], [module.generator_key("dog")]),
        (3, ["rooster"], round3_keys),
    ]
    assert [e.as_dict() for e in federation_of(trainer).resets] == reset.events  # the record other callbacks read
    assert "client 0: new classes ['rooster'] (seen: ['dog']) -> reset generator" in caplog.text
    if cls is PerClassGenerator:  # 'dog' is not touched by the round-3 reset
        before, after = recorder.ends[1]["weights"]["dog"], recorder.starts[2]["weights"]["dog"]
        assert all_equal(before, after)
    if cls is UnifiedGenerator:  # the whole generator starts again from its initialisation
        fresh = module_for(cls, dm, **kwargs)
        assert all_equal(recorder.starts[2]["weights"]["unified"], weights(fresh, "unified"))


@pytest.mark.parametrize("scope", ["generator", "client"])
def test_reset_scope_with_two_clients_holding_dog(scope):
    clients = [ClientSpec("0", classes=["dog"]), ClientSpec("1", classes=["dog", "rain"])]
    dm = small_datamodule(clients)
    module = module_for(PerClassGenerator, dm)
    reset = ClassChangeResetCallback(scope=scope)
    recorder = Recorder(keys=["dog"])
    federated_fit(module, dm, callbacks=[reset, recorder], max_rounds=2)
    trained_by_client0 = recorder.ends[0]["weights"]["dog"]
    seen_by_client1 = recorder.starts[1]["weights"]["dog"]
    client1_resets = [e["keys"] for e in reset.events if e["client"] == "1"]
    if scope == "generator":
        assert client1_resets == [["rain"]]
        assert all_equal(trained_by_client0, seen_by_client1)
    else:
        assert client1_resets == [["dog", "rain"]]
        assert all_equal(seen_by_client1, weights(module_for(PerClassGenerator, dm), "dog"))
    assert len(reset.events) == 2  # round 2 resets nothing in either scope


@pytest.mark.parametrize("cls", [PerGroupGenerator, UnifiedGenerator])
def test_a_shared_generator_of_several_classes_is_not_reset_again_for_the_classes_a_reset_wiped(cls):
    """Two clients teach one shared generator different classes. Each class resets it once, when it is
    new; the class that a reset wiped is relearned when its client comes back, not reset for again
    (that would wipe the generator at every visit)."""
    clients = [ClientSpec("0", classes=["dog"]), ClientSpec("1", classes=["rooster"])]
    dm = small_datamodule(clients)
    kwargs = {"class_groups": {"animals": ["dog", "rooster"]}} if cls is PerGroupGenerator else {}
    module = module_for(cls, dm, **kwargs)
    reset = ClassChangeResetCallback()
    federated_fit(module, dm, callbacks=[reset], max_rounds=3)
    assert [(e["round"], e["client"], e["classes"]) for e in reset.events] == [(1, "0", ["dog"]), (1, "1", ["rooster"])]
    key = module.generator_key("dog")
    assert module.seen_classes(key) == ["dog", "rooster"]  # both relearned since the last reset
    assert module.bank[key].wiped.tolist() == [c == "dog" for c in module.classes]


def test_shared_clients_train_the_servers_objects():
    clients = [ClientSpec(str(i), classes=["dog", "rain"]) for i in range(3)]
    dm = small_datamodule(clients)
    module = module_for(PerClassGenerator, dm)
    recorder = Recorder()
    trainer = federated_fit(module, dm, callbacks=[recorder], max_rounds=2)
    assert {id(s["bank"]) for s in recorder.starts} == {id(module.bank)}
    assert {id(s["optimizer"]) for s in recorder.starts} == {id(trainer.optimizers[0])}
    # progressive training: the shared Adam state counts every client's steps
    steps = trainer.optimizers[0].state[next(module.bank["dog"].parameters())]["step"]
    dog_batches = sum(1 for _ in dm.client("0").dataloader("train", ["dog"]))
    assert float(steps) == dog_batches * 3 * 2


def test_independent_clients_keep_their_own_state_across_rounds():
    clients = [ClientSpec(str(i), classes=["dog", "rain"]) for i in range(3)]
    dm = small_datamodule(clients)
    module = module_for(PerClassGenerator, dm)
    recorder = Recorder(keys=["dog"])
    trainer = federated_fit(module, dm, callbacks=[recorder], max_rounds=3, shared_generators=False)
    state = trainer.fit_loop.generators
    assert len({id(s["bank"]) for s in recorder.starts}) == 3
    assert len({id(s["optimizer"]) for s in recorder.starts}) == 3
    for cid in ["0", "1", "2"]:
        opt, bank = state.optimizers[cid], state.client_banks[cid]
        batches = sum(1 for _ in dm.client(cid).dataloader("train", ["dog"]))
        assert float(opt.state[next(bank["dog"].parameters())]["step"]) == batches * 3
    w = [weights_of(state.client_banks[c], "dog") for c in "012"]
    assert not all_equal(w[0], w[1]) and not all_equal(w[1], w[2])


def weights_of(bank, key):
    return [p.detach().clone() for p in bank[key].parameters()]


def test_fedavg_is_the_sample_weighted_average_over_the_clients_that_trained_the_key():
    clients = [
        ClientSpec("0", classes=["dog", "rooster"]),
        ClientSpec("1", classes=["dog"]),
        ClientSpec("2", classes=["rain"], schedule={2: ["rain"]}),  # holds no dog; idle in round 1
    ]
    dm = small_datamodule(clients, source=small_demo(train_per_class=13))
    module = module_for(PerClassGenerator, dm)
    recorder = Recorder(keys=["dog", "rooster"])
    trainer = federated_fit(
        module, dm, callbacks=[recorder], max_rounds=1, shared_generators=False, aggregation="fedavg"
    )
    n0, n1 = (recorder.ends[i]["stats"]["dog"]["samples"] for i in range(2))
    assert (n0, n1) == (7, 6)  # 13 dog clips split disjointly between the two holders
    w0, w1 = recorder.ends[0]["weights"]["dog"], recorder.ends[1]["weights"]["dog"]
    expected = [(n0 * a.double() + n1 * b.double()) / (n0 + n1) for a, b in zip(w0, w1)]
    banks = trainer.fit_loop.generators.client_banks
    for bank in (banks["0"], banks["1"], module.bank):
        for p, e in zip(bank["dog"].net.parameters(), expected):
            torch.testing.assert_close(p.double(), e, rtol=1e-6, atol=1e-7)
    # a key trained by one client only is that client's weights; idle client 2 holds no dog
    rooster_server = [p.detach() for p in module.bank["rooster"].net.parameters()]
    assert all_equal(rooster_server, [p for p in recorder.ends[0]["weights"]["rooster"][: len(rooster_server)]])
    assert "dog" not in banks["2"]


def test_the_average_of_one_source_is_its_state_copied_into_the_other_targets():
    source, other = nn.Linear(3, 2), nn.Linear(3, 2)
    versions = [p._version for p in source.parameters()]
    weighted_average([(source, 7.0)], [source, other])
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), other.parameters()))
    assert [p._version for p in source.parameters()] == versions  # not written onto itself


def generator_bytes(trainer, module) -> int:
    state = trainer.fit_loop.generators
    banks = list(state.banks().values()) or [module.bank]
    optimizers = list(getattr(state, "optimizers", {}).values()) or trainer.optimizers
    total = sum(p.numel() * p.element_size() for b in banks for p in b.parameters())
    for opt in optimizers:
        total += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return total


def test_generator_memory_constant_when_shared_and_linear_when_independent(capsys):
    sizes = {}
    for shared in (True, False):
        for n in (1, 10, 50):
            dm = small_datamodule(
                [ClientSpec(str(i), classes=["dog"]) for i in range(n)], source=small_demo(train_per_class=50)
            )
            module = module_for(PerClassGenerator, dm)
            trainer = federated_fit(module, dm, max_rounds=1, shared_generators=shared)
            sizes[(shared, n)] = generator_bytes(trainer, module)
    with capsys.disabled():
        print(
            "\ngenerator memory (bytes):",
            {f"{'shared' if s else 'independent'} x{n}": b for (s, n), b in sizes.items()},
        )
    assert sizes[(True, 1)] == sizes[(True, 10)] == sizes[(True, 50)]
    assert sizes[(False, 10)] == 10 * sizes[(False, 1)]
    assert sizes[(False, 50)] == 50 * sizes[(False, 1)]


def test_client_without_samples_is_skipped_with_a_warning(caplog):
    clients = [ClientSpec("0", classes=["dog"]), ClientSpec("late", schedule={3: ["rain"]})]
    dm = small_datamodule(clients)
    module = module_for(PerClassGenerator, dm)
    recorder = Recorder()
    with caplog.at_level(logging.WARNING):
        federated_fit(module, dm, callbacks=[recorder], max_rounds=1)
    assert [s["client"] for s in recorder.starts] == ["0"]
    assert "client late: no training samples for classes [] in round 1: skipped" in caplog.text


def test_unknown_client_class_lists_the_available_ones():
    dm = small_datamodule([ClientSpec("0", classes=["dog", "unicorn"])])
    with pytest.raises(ValueError, match=r"client '0': unknown classes \['unicorn'\].*available classes: \['dog'"):
        _ = dm.classes


def test_partitions_are_disjoint_and_deterministic():
    clients = [ClientSpec(str(i), classes=["dog", "rain"]) for i in range(3)]
    a, b = small_datamodule(clients).partition(), small_datamodule(clients).partition()
    for split in ("train", "val", "test"):
        parts = [set(a[c][split].tolist()) for c in "012"]
        assert sum(map(len, parts)) == len(set().union(*parts))
        assert all(torch.equal(a[c][split], b[c][split]) for c in "012")
    shared = small_datamodule(clients, overlap=True).partition()
    assert torch.equal(shared["0"]["train"], shared["1"]["train"])


def test_multi_device_strategy_is_refused():
    from a2vgen.trainer import FederatedTrainer

    with pytest.raises(NotImplementedError, match="not supported yet"):
        FederatedTrainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
