"""Checkpoint files: streamed to disk, never torn, and the Trainer's default unless the user brings one."""

import pytest
import torch
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from a2vgen.federation import FederatedTrainer, LocalCheckpointIO


def test_local_checkpoint_round_trips_and_leaves_no_temporary_file(tmp_path):
    state = {"weights": torch.randn(5, 3), "step": 7, "nested": {"moments": [torch.arange(4)]}}
    path = tmp_path / "deep" / "folder" / "x.ckpt"
    LocalCheckpointIO().save_checkpoint(state, path)
    loaded = TorchCheckpointIO().load_checkpoint(path)
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["step"] == 7
    assert torch.equal(loaded["nested"]["moments"][0], torch.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.ckpt"]


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
