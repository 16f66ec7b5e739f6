"""Paging the optimizer state of generators outside a visit to disk changes no result."""

import gc

import pytest
import torch

from a2vgen.callbacks import ClassChangeResetCallback, RoundCheckpoint
from a2vgen.federation.checkpoint import read_checkpoint
from a2vgen.federation.paging import OptimizerPager, file_mappings, page_mappings, release_mappings
from a2vgen.lightning_adapter import fit_loop_state
from a2vgen.modules import PerClassGenerator
from conftest import module_for, small_datamodule
from federation_helpers import StopAfterVisits, federated_fit
from test_resume import CLIENTS, OPTIONS


def run(root, shared, paging, stop_after=None, resume=False):
    dm = small_datamodule(CLIENTS)
    module = module_for(PerClassGenerator, dm, input_noise=0.2)
    callbacks = [ClassChangeResetCallback(scope="client"), RoundCheckpoint(dirpath=str(root), every_n_visits=1)]
    if stop_after:
        callbacks.append(StopAfterVisits(stop_after))
    options = dict(OPTIONS, shared_generators=shared, aggregation="none" if shared else "fedavg")
    trainer = federated_fit(
        module,
        dm,
        callbacks=callbacks,
        ckpt_path="last" if resume else None,
        page_optimizer_state=paging,
        default_root_dir=str(root),
        **options,
    )
    return trainer, module


def optimizer_states(trainer) -> list[dict]:
    generators = trainer.fit_loop.generators
    optimizers = list(trainer.optimizers) + list(getattr(generators, "optimizers", {}).values())
    return [opt.state_dict()["state"] for opt in optimizers]


def assert_same_optimizer_state(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for index in x:
            assert x[index].keys() == y[index].keys()
            for name in x[index]:
                torch.testing.assert_close(x[index][name], y[index][name], rtol=0, atol=0, msg=f"{index}.{name}")


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "independent"])
def test_paging_changes_neither_weights_nor_optimizer_state_nor_checkpoints(tmp_path, shared):
    plain_trainer, plain = run(tmp_path / "plain", shared, paging=False)
    paged_trainer, paged = run(tmp_path / "paged", shared, paging=True)
    pager = paged_trainer.fit_loop.pager
    assert plain_trainer.fit_loop.pager is None and pager is not None and pager.pages  # it did page
    assert page_mappings(), "paged state is mapped from its files"
    assert not list((tmp_path / "paged").glob(".a2vgen-paged-*")), "page files are unlinked once mapped"
    for (name, p), q in zip(plain.state_dict().items(), paged.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert_same_optimizer_state(optimizer_states(plain_trainer), optimizer_states(paged_trainer))
    a, b = read_checkpoint(tmp_path / "plain" / "last.ckpt"), read_checkpoint(tmp_path / "paged" / "last.ckpt")
    assert_same_optimizer_state(
        [s["state"] for s in a["optimizer_states"]], [s["state"] for s in b["optimizer_states"]]
    )
    if not shared:
        a, b = fit_loop_state(a)["generators"], fit_loop_state(b)["generators"]
        assert_same_optimizer_state(
            [s["state"] for s in a["optimizers"].values()], [s["state"] for s in b["optimizers"].values()]
        )


@pytest.mark.parametrize(
    "paging, shared", [(True, True), (False, True), (False, False)], ids=["paged", "unpaged", "independent"]
)
def test_a_run_resumes_exactly_from_a_memory_mapped_checkpoint_and_lets_go_of_it(tmp_path, monkeypatch, paging, shared):
    full_trainer, full = run(tmp_path / "full", shared, paging=False)
    run(tmp_path / "cut", shared, paging=paging, stop_after=4)
    releases = []
    page_out = OptimizerPager.page_out
    monkeypatch.setattr(
        OptimizerPager,
        "page_out",
        lambda self, *a, release=None: releases.append(release) or page_out(self, *a, release=release),
    )
    trainer, resumed = run(tmp_path / "cut", shared, paging=paging, resume=True)
    if paging:
        assert releases[0], "the restored optimizer state is paged out of the memory-mapped checkpoint first"
    assert trainer.fit_loop.visits == full_trainer.fit_loop.visits
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert_same_optimizer_state(optimizer_states(full_trainer), optimizer_states(trainer))
    gc.collect()
    with open("/proc/self/maps") as f:  # a replaced last.ckpt still mapped would show as "(deleted)"
        assert "last.ckpt" not in f.read(), "nothing keeps the checkpoint it resumed from mapped (nor its disk space)"


def test_paging_setting_is_checked():
    with pytest.raises(ValueError, match="page_optimizer_state"):
        federated_fit(None, None, page_optimizer_state="sometimes")


def test_pages_of_a_memory_mapped_checkpoint_are_found_and_dropped_without_changing_it(tmp_path):
    path = tmp_path / "state.ckpt"
    state = {"a": torch.randn(300_000), "b": torch.arange(10.0)}
    torch.save(state, path)
    loaded = torch.load(path, mmap=True, weights_only=True)
    assert float(loaded["a"].sum()) == float(state["a"].sum())  # reads every page
    maps = file_mappings(path)
    assert maps and sum(end - start for start, end in maps) >= path.stat().st_size
    release_mappings(maps)
    torch.testing.assert_close(loaded["a"], state["a"], rtol=0, atol=0)  # read again from the file
    assert file_mappings(tmp_path / "other.ckpt") == []
