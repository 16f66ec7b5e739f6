"""Faults injected into ``a2vgen fit``: kill -9 (real subprocesses), a full disk, a damaged ``last.ckpt``.

After each, resuming with ``--ckpt_path last`` must end where an uninterrupted run ends: the same weights,
optimizer state and ``metrics.csv`` rows (timings aside). Kill points are drawn from a seeded RNG.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from a2vgen.cli import main
from a2vgen.export import load_module
from fault_child import inject

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("fault_child.py")
FIT = [
    "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
    "--trainer.max_rounds", "3", "--trainer.local_epochs", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.callbacks+=" + str(ROOT / "callbacks" / "checkpoint.yaml"),
    "--trainer.callbacks.init_args.every_n_visits", "1",
    "--data.source.init_args.train_per_class", "8",
    "--data.source.init_args.val_per_class", "2",
    "--data.source.init_args.test_per_class", "2",
    "--data.batch_size", "4",
    "--model.init_args.hidden_dim", "16",
    "--model.init_args.latent_dim", "8",
    "--model.init_args.cond_width", "8",
]  # fmt: skip
TIMING = {"client_seconds"}


def child(workdir: Path, fault: str, n: int, *args: str) -> subprocess.CompletedProcess:
    """``a2vgen`` in a fresh Python process with ``fault`` injected at its ``n``-th occurrence."""
    src = str(ROOT / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), A2VGEN_DEBUG="")
    return subprocess.run(
        [sys.executable, str(CHILD), fault, str(n), "--", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def run_folder(workdir: Path) -> Path:
    (run,) = (workdir / "runs" / "demo").iterdir()
    return run


def rows(run: Path) -> list[dict]:
    """The rows of ``metrics.csv``: logged values only (empty cells and timings left out)."""
    with open(run / "metrics.csv", newline="") as file:
        return [{k: v for k, v in row.items() if k not in TIMING and v != ""} for row in csv.DictReader(file)]


def header(run: Path) -> str:
    return (run / "metrics.csv").read_text().splitlines()[0]


def state(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "weights": ckpt["state_dict"],
        "optimizer": ckpt["optimizer_states"],
        "federation": {k: v for k, v in ckpt["loops"]["fit_loop"]["state_dict"].items()},
        "callbacks": {k: v for k, v in ckpt["callbacks"].items() if "Reset" in k},
    }


def assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: the same run without faults (in-process; the computation is the same)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        main(FIT)
    finally:
        os.chdir(cwd)
    return run_folder(workdir)


def test_kill_9_at_seeded_points_then_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted, monkeypatch, caplog):
    rng = random.Random(14)
    # the first kill comes after the first checkpoint (a visit is ~5 steps): a kill before it leaves no run
    faults = [("kill-step", rng.randint(8, 30)), ("kill-after-metrics", rng.randint(1, 3)),
              ("kill-in-checkpoint", rng.randint(1, 3))]  # fmt: skip
    args = FIT
    for fault, n in faults:
        done = child(tmp_path, fault, n, *args)
        assert done.returncode == -signal.SIGKILL, (fault, n, done.stderr[-2000:])
        run = run_folder(tmp_path)
        assert all(torch.load(p, weights_only=True, mmap=True) for p in (run / "checkpoints").glob("*.ckpt"))
        args = [*FIT, "--ckpt_path", "last"]
    monkeypatch.chdir(tmp_path)
    main(args)  # the last resume runs in-process: the same code, one Python start less
    assert "resuming run runs/demo/version_0 from last.ckpt" in caplog.text
    assert_same(state(run / "checkpoints" / "last.ckpt"), state(uninterrupted / "checkpoints" / "last.ckpt"))
    assert rows(run) == rows(uninterrupted) and header(run) == header(uninterrupted)


@pytest.mark.parametrize("fault", ["enospc-checkpoint", "enospc-metrics"])
def test_disk_full_is_a_clear_error_keeps_earlier_files_and_resume_works(
    tmp_path, uninterrupted, fault, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        inject(fault, 4 if fault == "enospc-checkpoint" else 5, patch.setattr)
        with pytest.raises(SystemExit) as done:
            main(FIT)
    assert done.value.code == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-2]
    assert error.startswith("a2vgen fit: error: cannot write ") and "No space left on device" in error
    assert "free space and resume with --ckpt_path last" in error and "Traceback" not in stderr
    run = run_folder(tmp_path)
    before = rows(run)
    assert before and before == rows(uninterrupted)[: len(before)]  # intact, a prefix of the full run
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("*.part"))
    main([*FIT, "--ckpt_path", "last"])
    assert_same(state(run / "checkpoints" / "last.ckpt"), state(uninterrupted / "checkpoints" / "last.ckpt"))
    assert rows(run) == rows(uninterrupted) and header(run) == header(uninterrupted)


def test_damaged_last_checkpoint_is_a_clear_error_and_round_files_cannot_be_resumed(
    tmp_path, uninterrupted, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(uninterrupted.parent.parent.parent / "runs", tmp_path / "runs")
    run = run_folder(tmp_path)
    checkpoints = run / "checkpoints"
    (checkpoints / "last.ckpt").write_bytes(b"PK\x03\x04 torn")
    folder = checkpoints.relative_to(tmp_path)
    with pytest.raises(SystemExit) as done:
        main([*FIT, "--ckpt_path", "last"])
    assert done.value.code == 2
    error = capsys.readouterr().err
    assert f"{folder / 'last.ckpt'} is missing or damaged: cannot resume exactly; {folder / 'round-0003.ckpt'}" in error
    with pytest.raises(SystemExit) as done:
        main([*FIT, "--ckpt_path", str(folder / "round-0003.ckpt")])
    assert done.value.code == 2
    assert "round-0003.ckpt is a weights-only round snapshot (no optimizer state)" in capsys.readouterr().err
    assert rows(run) == rows(uninterrupted)  # nothing was trained or overwritten


def test_round_files_hold_their_rounds_generators_without_optimizer_state(uninterrupted):
    checkpoints = uninterrupted / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "round-0002.ckpt", "round-0003.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    newest = torch.load(checkpoints / "round-0003.ckpt", weights_only=True)
    assert "optimizer_states" in last and "optimizer_states" not in newest
    assert_same(newest["state_dict"], last["state_dict"])
    assert_same(newest["a2vgen"], last["a2vgen"])
    module, _ = load_module(checkpoints / "round-0002.ckpt")
    older = torch.load(checkpoints / "round-0002.ckpt", weights_only=True)["state_dict"]
    assert_same({k: v for k, v in module.state_dict().items() if k in older}, older)
    assert not all(torch.equal(older[k], last["state_dict"][k]) for k in older)  # round 2, not round 3
