"""Flower's Deployment Engine on one machine: a SuperLink and 3 SuperNodes on 127.0.0.1 run the demo config in
both sharing modes; per-visit seconds are printed next to the in-process federation's.

A visit's seconds are the server's, from sending the visit to loading the reply (the ``(x.xxs)`` of each
``round r/R client c`` log line), so the difference is what Flower adds per visit: a fresh ClientApp
process per message (importing torch, Lightning and a2vgen), building the run, polling, and moving the
state. Not part of CI (minutes). Run: ``python benchmarks/flower_deployment.py [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VISIT = re.compile(r"round \d+/\d+ client \S+ .*\((\d+\.\d+)s\)")
SENT = re.compile(r"visit of round \d+ sent to its node \((\d+\.\d+) MB\)")
RECEIVED = re.compile(r"reply received \((\d+\.\d+) MB\)")


def demo_config(folder: Path, shared: bool, rounds: int) -> str:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(max_rounds=rounds, shared_generators=shared, aggregation="none" if shared else "fedavg")
    trainer["enable_progress_bar"] = False
    trainer["logger"]["init_args"]["save_dir"] = str(folder)
    return yaml.safe_dump(config, sort_keys=False)


def in_process(config: str) -> list[float]:
    """Visit seconds of ``FederatedTrainer.fit`` in this process."""
    import logging

    from a2vgen.flower.settings import instantiate

    seconds: list[float] = []

    class Visits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = VISIT.search(record.getMessage())
            if match:
                seconds.append(float(match.group(1)))

    handler = Visits()
    logging.getLogger("a2vgen").addHandler(handler)
    logging.getLogger("a2vgen").setLevel(logging.INFO)
    try:
        module, datamodule, trainer = instantiate(config)
        trainer.fit(module, datamodule=datamodule)
    finally:
        logging.getLogger("a2vgen").removeHandler(handler)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the demo config per mode")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from a2vgen.flower.bundle import write_app
    from a2vgen.flower.local import free_port, local_env, wait_for_port

    work = Path(tempfile.mkdtemp(prefix="a2vgen-flower-bench-"))
    home, port = work / "flwr-home", free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = local_env(home, BIN, ROOT / "src")
    log = (work / "processes.log").open("w")
    started: list[subprocess.Popen] = []

    def start(command: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        started.append(process)
        return process

    link = start([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)])
    rows = []
    try:
        wait_for_port(port, link, "the SuperLink", work / "processes.log")
        for client in range(3):
            node_config = f'client-id="{client}" state-dir="{work / f"node-{client}"}"'
            start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                   "--node-config", node_config, "--port", str(free_port())])  # fmt: skip
        for shared in (True, False):
            mode = "shared" if shared else "independent + fedavg"
            local = in_process(demo_config(work / "in-process", shared, args.rounds))
            app = write_app(
                demo_config(work / "flower", shared, args.rounds), work / f"app-{len(rows)}", "a2vgen-bench"
            )
            begin = time.perf_counter()
            run = subprocess.run(
                [str(BIN / "flwr"), "run", str(app.parent), "bench", "--stream"],
                env=env, cwd=work, capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
            wall = time.perf_counter() - begin
            output = run.stdout + run.stderr
            remote = [float(m) for m in VISIT.findall(output)]
            if run.returncode != 0 or len(remote) != len(local):
                raise RuntimeError(f"flwr run failed ({len(remote)} visits of {len(local)}):\n{output[-3000:]}")
            sent, received = (statistics.mean(float(m) for m in p.findall(output)) for p in (SENT, RECEIVED))
            rows.append((mode, statistics.mean(local), statistics.mean(remote), sent, received, wall))
    finally:
        for process in started[::-1]:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
    print(
        f"demo config, {args.rounds} rounds x 3 clients, SuperLink + 3 SuperNodes on 127.0.0.1 ({os.cpu_count()} CPUs)"
    )
    print(
        "| mode | in-process s/visit | Flower deployment s/visit | overhead s/visit | MB sent / received per visit | flwr run wall s |"
    )
    print("|---|---|---|---|---|---|")
    for mode, local, remote, sent, received, wall in rows:
        print(
            f"| {mode} | {local:.2f} | {remote:.2f} | {remote - local:.2f} | {sent:.2f} / {received:.2f} | {wall:.0f} |"
        )


if __name__ == "__main__":
    main()
