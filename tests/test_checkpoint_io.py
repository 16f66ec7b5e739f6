"""Checkpoint files: streamed to disk, never torn, and the Trainer's default unless the user brings one."""

import errno
import threading
import zipfile

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from a2vgen.callbacks import RoundCheckpoint
from a2vgen.errors import UserError
from a2vgen.federation import FederatedTrainer, LocalCheckpointIO
from a2vgen.federation import checkpoint_io as checkpoint_io_module
from a2vgen.federation.checkpoint_io import CheckpointCommitError
from a2vgen.modules import PerClassGenerator
from conftest import module_for, small_datamodule
from federation_helpers import federated_fit
from test_resume import CLIENTS


def test_local_checkpoint_round_trips_and_leaves_no_temporary_file(tmp_path):
    state = {"weights": torch.randn(5, 3), "step": 7, "nested": {"moments": [torch.arange(4)]}}
    path = tmp_path / "deep" / "folder" / "x.ckpt"
    io = LocalCheckpointIO()
    io.save_checkpoint(state, path)
    io.wait()  # synced and renamed into place in the background
    loaded = TorchCheckpointIO().load_checkpoint(path)
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["step"] == 7
    assert torch.equal(loaded["nested"]["moments"][0], torch.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.ckpt"]
    # written without the records' CRC-32 (nothing reads it), and torch.save elsewhere keeps computing it
    assert {info.CRC for info in zipfile.ZipFile(path).infolist()} == {0}
    torch.save(state, tmp_path / "plain.pt")
    assert 0 not in {info.CRC for info in zipfile.ZipFile(tmp_path / "plain.pt").infolist()}


class Unsaveable:
    def __reduce__(self):
        raise RuntimeError("cannot be saved")


def test_failed_save_keeps_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    io = LocalCheckpointIO()
    io.save_checkpoint({"round": 1}, path)
    with pytest.raises(RuntimeError, match="cannot be saved"):  # fails after the file was opened
        io.save_checkpoint({"round": 2, "weights": torch.ones(1000), "hook": Unsaveable()}, path)
    assert io.load_checkpoint(path) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_federated_trainer_writes_with_local_io_unless_given_another(tmp_path):
    default = FederatedTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    assert isinstance(default.strategy.checkpoint_io, LocalCheckpointIO)
    mine = AsyncCheckpointIO()
    custom = FederatedTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, plugins=[mine])
    assert custom.strategy.checkpoint_io is mine


def test_a_wait_on_one_thread_covers_a_save_in_progress_on_another(tmp_path, monkeypatch):
    """Nested in Lightning's ``AsyncCheckpointIO`` the saves run on its worker thread: a wait (before a read
    or removal) that comes while one is being written returns once that file is in place."""
    started = threading.Event()
    save = checkpoint_io_module.save_without_crc

    def slow(checkpoint, f):
        started.set()
        threading.Event().wait(0.3)
        save(checkpoint, f)

    monkeypatch.setattr(checkpoint_io_module, "save_without_crc", slow)
    path = tmp_path / "last.ckpt"
    io = LocalCheckpointIO()
    outer = AsyncCheckpointIO(io)
    outer.save_checkpoint({"round": 1}, path)
    assert started.wait(timeout=10)
    io.wait()
    assert TorchCheckpointIO().load_checkpoint(path) == {"round": 1}
    outer.teardown()


@pytest.fixture
def held_commit(monkeypatch):
    """Holds every background commit (sync and rename) until the returned event is set."""
    release = threading.Event()
    commit = checkpoint_io_module.commit

    def held(tmp, path):
        release.wait(timeout=10)
        commit(tmp, path)

    monkeypatch.setattr(checkpoint_io_module, "commit", held)
    return release


def test_the_previous_checkpoint_stays_until_the_new_one_is_synced_and_each_read_waits_for_it(tmp_path, held_commit):
    path = tmp_path / "last.ckpt"
    io = LocalCheckpointIO()
    io.save_checkpoint({"round": 1}, path)
    held_commit.set()
    assert io.load_checkpoint(path) == {"round": 1}
    held_commit.clear()
    io.save_checkpoint({"round": 2}, path)  # returns before the file is in place: training goes on
    assert TorchCheckpointIO().load_checkpoint(path) == {"round": 1}  # a kill now resumes from round 1
    threading.Timer(0.2, held_commit.set).start()
    assert io.load_checkpoint(path) == {"round": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_failed_background_commit_is_raised_by_the_next_save_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = LocalCheckpointIO()
    io.save_checkpoint({"round": 1}, path)
    io.wait()

    def full_disk(tmp, target):
        tmp.unlink()
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(checkpoint_io_module, "commit", full_disk)
    io.save_checkpoint({"round": 2}, path)
    with pytest.raises(CheckpointCommitError, match="No space left") as failed:
        io.save_checkpoint({"round": 3}, tmp_path / "round-0003.ckpt")
    assert failed.value.path == path  # the file whose commit failed, not the one being saved
    assert TorchCheckpointIO().load_checkpoint(path) == {"round": 1}


@pytest.mark.parametrize(
    "failing,named",
    [(None, "last.ckpt"), ("round-0001.ckpt", "round-0001.ckpt"), ("round-0002.ckpt", "round-0002.ckpt")],
    ids=["first", "round file", "final"],
)
def test_a_failed_commit_during_fit_is_a_user_error_naming_its_file(tmp_path, monkeypatch, failing, named):
    """Surfacing at the next save (the first commit fails), at the next round's end (a round file fails) or
    only when fit ends, after Lightning's teardown (the final one fails), the error names the file whose
    commit failed."""
    commit = checkpoint_io_module.commit

    def fail(tmp, path):
        if failing is not None and path.name != failing:
            return commit(tmp, path)
        tmp.unlink()
        raise OSError(errno.EIO, "Input/output error", str(tmp))

    monkeypatch.setattr(checkpoint_io_module, "commit", fail)
    dm = small_datamodule(CLIENTS)
    callbacks = [RoundCheckpoint(dirpath=tmp_path / "checkpoints", keep_last=1)]
    with pytest.raises(UserError, match=rf"cannot write checkpoint \S*{named}: Input/output error"):
        federated_fit(module_for(PerClassGenerator, dm), dm, callbacks=callbacks, max_rounds=2)


def test_outside_fit_the_trainer_returns_once_the_file_is_in_place(tmp_path, held_commit):
    trainer = FederatedTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(BoringModel())
    threading.Timer(0.2, held_commit.set).start()
    trainer.save_checkpoint(tmp_path / "x.ckpt", weights_only=True)
    assert (tmp_path / "x.ckpt").is_file() and not (tmp_path / "x.ckpt.tmp").exists()
