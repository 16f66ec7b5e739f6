"""The Flower apps through a real SuperLink (simulation runtime, 3 nodes, both sharing modes): the final weights
equal the in-process federation's bit for bit. The SuperLink listens on a free 127.0.0.1 port with its own
FLWR_HOME and is stopped by PID, with the processes it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")  # the simulation runtime: a2vgen[flower-sim]

from a2vgen.flower.bundle import write_app  # noqa: E402
from a2vgen.flower.local import free_port, local_env, wait_for_port  # noqa: E402
from a2vgen.flower.settings import instantiate  # noqa: E402
from flower_helpers import tiny_config  # noqa: E402

BIN = Path(sys.executable).parent
SRC = Path(__file__).resolve().parents[1] / "src"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc: the SuperLink's SuperExec, simulation and Ray processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL after 5 s, to each of ``pids`` (processes this test started)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if running(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(running(pid) for pid in alive):
            time.sleep(0.1)


@pytest.fixture
def superlink(tmp_path):
    """A SuperLink in simulation mode on 127.0.0.1; yields the environment for ``flwr run`` and a connection name."""
    home, port = tmp_path / "flwr-home", free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**local_env(home, BIN, SRC), "RAY_DEDUP_LOGS": "0"}
    log = (tmp_path / "superlink.log").open("w")
    command = [str(BIN / "flower-superlink"), "--simulation", "--insecure", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for_port(port, process, "SuperLink", tmp_path / "superlink.log")
        yield env, "test"
    finally:
        stop([process.pid, *descendants(process.pid)])
        process.wait()
        log.close()


def banks(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The server bank and every independent client's bank in a checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    out = {f"module/{k}": v for k, v in state["state_dict"].items() if k.startswith("bank.")}
    generators = state["loops"]["fit_loop"]["state_dict"]["generators"]
    for cid, bank in generators.get("banks", {}).items():
        out.update({f"{cid}/{k}": v for k, v in bank.items()})
    return out


def test_flower_simulation_matches_the_in_process_federation(tmp_path, superlink):
    env, connection = superlink
    runs = {}
    for shared in (True, False):
        mode = "shared" if shared else "independent"
        app = write_app(tiny_config(str(tmp_path / mode), shared), tmp_path / f"app-{mode}", f"a2vgen-{mode}").parent
        command = [str(BIN / "flwr"), "run", str(app), connection, "--stream",
                   "--run-config", f'threads=1 node-state-dir="{tmp_path / "nodes"}"',
                   "--federation-config", "num-supernodes=3 client-resources-num-cpus=1 init-args-num-cpus=1"]  # fmt: skip
        out = (tmp_path / f"{mode}.log").open("w")
        runs[shared] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path), out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the nodes and the server (run config threads=1)
    try:
        for shared in (True, False):  # the in-process references, while the Flower runs start up
            module, datamodule, trainer = instantiate(tiny_config(str(tmp_path / "reference"), shared))
            trainer.fit(module, datamodule=datamodule)
    finally:
        torch.set_num_threads(threads)
    for shared, (process, out) in runs.items():
        mode = "shared" if shared else "independent"
        try:
            process.wait(timeout=240)
        finally:
            out.close()
        log = (tmp_path / f"{mode}.log").read_text()
        assert process.returncode == 0, log[-3000:]
        assert log.count("visit of round") == 9 and "reset generator 'crying_baby'" in log, log[-3000:]
        reference = sorted((tmp_path / "reference" / "fl").glob("version_*"))[0 if shared else 1]
        expected = banks(reference / "checkpoints" / "last.ckpt")
        got = banks(tmp_path / mode / "fl" / "version_0" / "checkpoints" / "last.ckpt")
        assert got.keys() == expected.keys() and len(got) > 100
        different = [name for name in expected if not torch.equal(got[name], expected[name])]
        assert not different, different[:5]
