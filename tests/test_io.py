"""The one atomic-write helper, and the per-module cache of class-row statistics."""

from __future__ import annotations

import pytest
import torch

from a2vgen.io import atomic_path
from a2vgen.nn.conditioning import row_statistics


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "state.json"
    with atomic_path(path) as tmp:
        tmp.write_text("one")
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError, match="halfway"), atomic_path(path) as tmp:
        tmp.write_text("tw")
        raise RuntimeError("halfway")
    assert path.read_text() == "one"
    with atomic_path(path, shared=True) as tmp:
        assert tmp.name.startswith(".state.json.") and tmp.name.endswith(".tmp")
        tmp.write_text("two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_row_statistics_are_reused_only_for_the_same_unmodified_tensor():
    rows = torch.randn(5, 3, 4)
    mean, std = row_statistics(rows)
    assert torch.equal(mean, rows.double().mean(0).float()) and torch.equal(std, rows.double().std(0).float())
    assert row_statistics(rows)[0] is mean  # cached
    assert not torch.equal(row_statistics(rows.clone() + 1)[0], mean)  # another tensor
    rows.mul_(2)  # modified in place: recomputed
    assert torch.equal(row_statistics(rows)[0], rows.double().mean(0).float())
    assert torch.equal(row_statistics(torch.ones(1, 2))[1], torch.ones(2))  # one row: std 1
