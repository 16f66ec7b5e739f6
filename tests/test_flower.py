"""Federation on Flower, with nodes in this process (a grid that calls the ClientApp): exactness, faults, resume,
and the app folder. The run through a real SuperLink is in ``test_flower_simulation.py``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tomllib
import torch

pytest.importorskip("flwr")

from flwr.app import Array  # noqa: E402

from a2vgen.cli import main  # noqa: E402
from a2vgen.errors import UserError  # noqa: E402
from a2vgen.flower.server import run_server  # noqa: E402
from a2vgen.flower.settings import FlowerSettings, instantiate  # noqa: E402
from flower_helpers import BankSnapshots, LocalGrid, bank_state, tiny_config  # noqa: E402


@pytest.fixture
def one_thread():
    """Nodes and references train with one torch thread (equal counts: bit-exact comparisons)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ROOT = Path(__file__).resolve().parents[1]
_REFERENCES: dict[bool, dict[str, torch.Tensor]] = {}


def reference(shared: bool, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final banks of the in-process ``FederatedTrainer.fit`` of the tiny config (computed once per mode)."""
    if shared not in _REFERENCES:
        folder = tmp_path_factory.mktemp("reference")
        module, datamodule, trainer = instantiate(tiny_config(str(folder), shared))
        trainer.fit(module, datamodule=datamodule)
        _REFERENCES[shared] = bank_state(trainer)
    return _REFERENCES[shared]


def flower_fit(tmp_path, shared: bool, fault=None, **options):
    settings = FlowerSettings(
        config=tiny_config(
            str(tmp_path / "runs"),
            shared,
            every_n_visits=options.pop("every_n_visits", 0),
            callbacks=options.pop("callbacks", ()),
        ),
        threads=1,
        node_state_dir=str(tmp_path / "nodes"),
        node_wait=1.0,
        **options,
    )
    grid = LocalGrid(settings.run_config(), fault)
    return run_server(grid, settings), grid


def assert_same(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(state[name], expected[name])]
    assert not different, different[:5]


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "independent"])
def test_visits_on_nodes_match_the_in_process_federation(tmp_path, tmp_path_factory, one_thread, shared):
    trainer, grid = flower_fit(tmp_path, shared)
    assert_same(bank_state(trainer), reference(shared, tmp_path_factory))
    assert len(grid.visits) == 9 and {node for node, _ in grid.visits} == {101, 102, 103}
    reset = next(c for c in trainer.callbacks if type(c).__name__ == "ClassChangeResetCallback")
    assert [(e["round"], e["client"], e["keys"]) for e in reset.events if e["round"] > 1] == [
        (2, "0", ["rooster"]),
        (3, "1", ["crying_baby"]),
    ]  # the resets ran on the nodes and were recorded by the server
    if not shared:  # Adam state stayed on the nodes, one file per visited round
        kept = sorted(p.name for p in (tmp_path / "nodes").rglob("client-1/*.safetensors"))
        assert kept == ["round-1.safetensors", "round-2.safetensors", "round-3.safetensors"]
        assert not any(trainer.fit_loop.generators.optimizers[cid].state for cid in "012")


def drop_first_attempt(client: str, round: int):
    seen = set()

    def fault(message, node):
        visit = message.content.get("visit")
        if visit is not None and (visit["client"], visit["round"]) == (client, round) and client not in seen:
            seen.add(client)
            return "drop"
        return None

    return fault


def test_a_vanished_node_is_retried_and_the_run_ends_as_without_it(tmp_path, tmp_path_factory, one_thread, caplog):
    trainer, grid = flower_fit(tmp_path, False, fault=drop_first_attempt("1", 2), retries=1)
    assert_same(bank_state(trainer), reference(False, tmp_path_factory))
    assert grid.visits.count((102, 2)) == 1  # the dropped attempt never reached the node
    assert "round 2 client 1, attempt 1/2: no reply from the node of client 1" in caplog.text


def corrupt(kind: str, client: str = "1", round: int = 2):
    def alter(content) -> None:
        name = next(n for n in content["bank"] if n.endswith("weight"))
        value = content["bank"][name].numpy()
        if kind == "nan":
            value[(0,) * value.ndim] = math.nan
        else:
            value = value[:-1]
        content["bank"][name] = Array.from_numpy_ndarray(value)

    def fault(message, node):
        visit = message.content.get("visit")
        return alter if visit is not None and (visit["client"], visit["round"]) == (client, round) else None

    return fault


@pytest.mark.parametrize("kind, message", [("nan", "holds NaN or Inf"), ("shape", "expected [")])
def test_a_corrupt_state_is_rejected_and_the_server_state_is_untouched(tmp_path, one_thread, caplog, kind, message):
    BankSnapshots.STATES.clear()
    trainer, _ = flower_fit(
        tmp_path, True, fault=corrupt(kind), on_node_failure="skip", callbacks=("flower_helpers.BankSnapshots",)
    )
    assert "bank from client 1: " in caplog.text and message in caplog.text
    assert "round 2: client 1 skipped for this round, its state unchanged" in caplog.text
    assert trainer.fit_loop.visits == 8  # the rejected visit is not counted, logged or checkpointed as done
    states = BankSnapshots.STATES
    rejected = next(i for i, (r, cid, _) in enumerate(states) if (r, cid) == (2, "1"))
    before, after = states[rejected][2], states[rejected + 1][2]  # the rejected visit's start, the next visit's
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_failing_node_can_stop_the_run(tmp_path, one_thread):
    with pytest.raises(UserError, match="the visit of client 1 failed: bank from client 1: .* holds NaN or Inf"):
        flower_fit(tmp_path, True, fault=corrupt("nan"), on_node_failure="stop")


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "independent"])
def test_a_restarted_server_resumes_from_its_checkpoint_and_the_nodes_from_their_state(
    tmp_path, tmp_path_factory, one_thread, shared
):
    def crash(message, node):
        visit = message.content.get("visit")
        if visit is not None and (visit["client"], visit["round"]) == ("1", 2):
            raise ConnectionError("server machine lost")
        return None

    with pytest.raises(ConnectionError):
        flower_fit(tmp_path, shared, fault=crash, every_n_visits=1)
    trainer, grid = flower_fit(tmp_path, shared, ckpt_path="last", every_n_visits=1)
    assert grid.visits[0] == (102, 2) and len(grid.visits) == 5  # continued with the visit that was cut
    assert_same(bank_state(trainer), reference(shared, tmp_path_factory))


def test_flower_app_writes_a_runnable_app_folder_outside_repositories(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = str(ROOT / "configs" / "demo.yaml")
    main(["flower-app", "--config", demo, "--trainer.max_rounds", "2", "--out", str(tmp_path / "app")])
    project = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "a2vgen.flower.apps:server_app",
        "clientapp": "a2vgen.flower.apps:client_app",
    }
    settings = FlowerSettings.from_run_config(app["config"])
    assert settings.on_node_failure == "retry" and "max_rounds: 2" in settings.config
    assert f"save_dir: {tmp_path / 'runs'}" in settings.config  # relative to where flower-app ran, made absolute
    with pytest.raises(SystemExit):
        main(["flower-app", "--config", demo, "--out", str(ROOT / "apps" / "demo")])  # inside this repository
    assert "is inside the repository" in capsys.readouterr().err


def test_unknown_run_config_keys_are_named():
    with pytest.raises(UserError, match=r"unknown run config keys \['retry'\]"):
        FlowerSettings.from_run_config({"config": "x", "retry": 3})
