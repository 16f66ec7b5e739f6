"""Shared plumbing of the benchmarks: settings, contenders run in alternating processes, tables.

Each benchmark script defines ``CONTENDERS`` specs and a ``run_contender(spec)`` function that measures one
contender and returns a dict of numbers. :func:`alternate` runs every contender ``repeats`` times, each run
in a fresh process (``python <script> --worker '<spec json>'``), visiting the contenders in turn
(A B C A B C ...) so that a slow phase of the machine hits all of them alike; the median is reported.
With ``inprocess=True`` (``--smoke``) the contenders run in the calling process instead (importing Lightning
per process costs ~5 s). Nothing waits for a quiet machine: each run records how many CPUs other processes
kept busy, and a result measured under more than :data:`CONTENDED` of them is marked ``noisy``. Under
``run_all.py`` a deadline (``A2VGEN_BENCH_DEADLINE``, seconds since the epoch) stops further repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

THREADS = 2
BATCH = 64
DIM_NAMES = ("hidden_dim", "latent_dim", "cond_width")
SMOKE_DIMS = {"hidden_dim": 32, "latent_dim": 8, "cond_width": 8}
SD_DATA = {"tokens": 4, "audio_dim": 768, "cond_tokens": 77, "cond_dim": 768}
SMOKE_DATA = {"tokens": 4, "audio_dim": 16, "cond_tokens": 6, "cond_dim": 8}
RESULT_TAG = "BENCH-RESULT "
CONTENDED = 0.3  # a run during which other processes kept more CPUs busy than this on average is "noisy"
DEADLINE_ENV = "A2VGEN_BENCH_DEADLINE"
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"


def setup_torch() -> None:
    """fp32, 2 threads, freed memory kept for reuse (as the trainer does: raw loops and fits alike), quiet
    Lightning."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import: import first, then quiet)
    import torch

    from a2vgen.allocator import reuse_freed_memory

    reuse_freed_memory()
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float32)
    _warm_up(torch)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "a2vgen"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _warm_up(torch) -> None:
    """Pay one-time lazy imports/initialisation (optimizer step, autograd, clipping) before any timing."""
    net = torch.nn.Linear(4, 4)
    for fused in (False, True):
        opt = torch.optim.AdamW(net.parameters(), fused=fused)
        net(torch.randn(2, 4)).sum().backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one in-process run (a few seconds)")
    p.add_argument("--repeats", type=int, default=3, help="runs per contender (median reported)")
    p.add_argument("--inprocess", action="store_true", help="run contenders in this process (no isolation)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def _cpu_snapshot() -> tuple[float, float, float]:
    """(busy CPU-seconds of the machine, CPU-seconds of this process, wall time)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        busy = 0.0
    t = os.times()
    return busy, t.user + t.system, time.monotonic()


def worker_main(run_contender: Callable[[dict], dict], spec_json: str) -> int:
    """Run one contender in this (fresh) process and print its result as one tagged JSON line.

    ``others_cpus`` is the mean number of CPUs other processes kept busy meanwhile (contention check).
    """
    setup_torch()
    before = _cpu_snapshot()
    result = run_contender(json.loads(spec_json))
    after = _cpu_snapshot()
    wall = max(after[2] - before[2], 1e-9)
    result["others_cpus"] = max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def run_in_fresh_process(script: str, spec: dict) -> dict:
    cmd = [sys.executable, script, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"{script} printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def default_dims() -> dict:
    """The generator modules' default network sizes (read from the base module's signature)."""
    import inspect

    from a2vgen.modules.base import BaseGeneratorModule

    params = inspect.signature(BaseGeneratorModule.__init__).parameters
    return {name: params[name].default for name in DIM_NAMES}


def deadline() -> float | None:
    """Wall-clock time (``time.time()``) after which no further repeat starts, when ``run_all`` set one."""
    value = os.environ.get(DEADLINE_ENV)
    return float(value) if value else None


def alternate(
    script: str,
    run_contender: Callable[[dict], dict],
    specs: Sequence[dict],
    repeats: int,
    inprocess: bool,
) -> dict[str, dict]:
    """Run every spec ``repeats`` times in alternation; return ``name -> {metric: median, "runs": n, ...}``.

    Each contender runs at least once; a later repeat starts only if it should end (judged by that
    contender's slowest run so far) before :func:`deadline`. ``others_cpus`` is the most CPUs other
    processes kept busy during a run of the contender and ``noisy`` says whether that exceeded
    :data:`CONTENDED`.
    """
    runs: dict[str, list[dict]] = {s["name"]: [] for s in specs}
    took: dict[str, float] = {}
    cut = False
    if inprocess:
        setup_torch()
    for _ in range(repeats):
        for spec in specs:
            name = spec["name"]
            done = runs[name]
            if len(done) >= spec.get("repeats", repeats):
                continue
            end = deadline()
            if done and end is not None and time.time() + took[name] > end:
                cut = True
                continue
            start = time.time()
            done.append(run_contender(dict(spec)) if inprocess else run_in_fresh_process(script, spec))
            took[name] = max(took.get(name, 0.0), time.time() - start)
    out = {}
    for name, results in runs.items():
        merged = {}
        for key in results[0]:
            values = [r[key] for r in results]
            merged[key] = statistics.median(values) if all(isinstance(v, (int, float)) for v in values) else values[0]
        merged["runs"] = len(results)
        if "others_cpus" in results[0]:
            merged["others_cpus"] = max(r["others_cpus"] for r in results)
            merged["noisy"] = merged["others_cpus"] > CONTENDED
        out[name] = merged
    busy = {n: r["others_cpus"] for n, r in out.items() if "others_cpus" in r}
    if busy:
        print(
            "(CPUs kept busy by other processes during runs, max: "
            + ", ".join(f"{n}: {v:.2f}{' NOISY' if v > CONTENDED else ''}" for n, v in busy.items())
            + f"; load average {os.getloadavg()[0]:.2f})"
        )
    if cut:
        print("(repeats cut short by the time budget)")
    return out


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A plain fixed-width table."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n{title}")
    print("-" * len(line))
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print(line)
    for row in cells:
        print(" | ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths)))
    print("-" * len(line), flush=True)


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).replace("x", "").replace(",", "").strip().isdigit()


def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def noisy(result: dict) -> str:
    """``yes`` when other processes kept more than :data:`CONTENDED` CPUs busy during the result's runs."""
    return "yes" if result.get("noisy") else "no"


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# ---------------------------------------------------------------------- training helpers
def demo_source(smoke: bool, num_classes: int, train_per_class: int):
    from a2vgen.data.sources import DemoEmbeddings

    shape = SMOKE_DATA if smoke else SD_DATA
    return DemoEmbeddings(
        num_classes=num_classes, train_per_class=train_per_class, val_per_class=2, test_per_class=2, **shape
    )


def datamodule(source, clients, key_grouped: bool = True, batch_size: int = BATCH):
    from a2vgen.data.datamodule import FederatedDataModule

    return FederatedDataModule(clients=clients, source=source, batch_size=batch_size, key_grouped=key_grouped)


def module(cls_name: str, dm, dims: dict, **kwargs):
    import a2vgen.modules as modules

    cls = getattr(modules, cls_name)
    return cls(
        classes=dm.classes,
        audio_shape=dm.audio_shape,
        cond_shapes=dm.cond_shapes,
        class_cond=dm.class_cond,
        **dims,
        **kwargs,
    )


def trainer(
    root: str,
    max_rounds: int = 1,
    local_epochs: int = 1,
    shared: bool = True,
    logging: bool = True,
    checkpoint: bool = True,
    **kwargs,
):
    """A ``FederatedTrainer`` as a user gets it: CSVLogger and RoundCheckpoint unless switched off."""
    from lightning.pytorch.loggers import CSVLogger

    from a2vgen.callbacks import RoundCheckpoint
    from a2vgen.trainer import FederatedTrainer

    callbacks = [RoundCheckpoint(dirpath=os.path.join(root, "checkpoints"))] if checkpoint else []
    return FederatedTrainer(
        max_rounds=max_rounds,
        local_epochs=local_epochs,
        shared_generators=shared,
        aggregation=kwargs.pop("aggregation", "none" if shared else "fedavg"),
        default_root_dir=root,
        logger=CSVLogger(root, name="bench") if logging else False,
        callbacks=callbacks,
        enable_checkpointing=checkpoint,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        **kwargs,
    )


class SampleCounter:
    """A callback counting the samples the federation trained on (sum over visits and local epochs)."""

    def __init__(self) -> None:
        self.samples = 0.0
        self.visits = 0
        self.visit_seconds = 0.0

    def on_client_end(self, trainer, module, visit) -> None:
        self.samples += sum(v["samples"] for v in visit.stats.values())
        self.visits += 1
        self.visit_seconds += visit.seconds


def timed_fit(trainer_, module_, dm, counter_out: list | None = None) -> tuple[float, float]:
    """Seconds of ``trainer.fit`` and the samples it trained on (``counter_out`` receives the counter)."""
    from lightning.pytorch import Callback

    counter = type("BenchSampleCounter", (SampleCounter, Callback), {})()
    trainer_.callbacks.append(counter)
    if counter_out is not None:
        counter_out.append(counter)
    start = time.perf_counter()
    trainer_.fit(module_, datamodule=dm)
    return time.perf_counter() - start, counter.samples


def timed_unified_fit(dm, dims: dict, rounds: int, local_epochs: int, checkpoint: bool = True) -> tuple[float, float]:
    """``timed_fit`` of a fresh shared ``UnifiedGenerator`` (the original objective, the raw loops' math) on
    ``dm`` in a throw-away run folder."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        trainer_ = trainer(root, max_rounds=rounds, local_epochs=local_epochs, checkpoint=checkpoint)
        return timed_fit(trainer_, module("UnifiedGenerator", dm, dims, objective="original"), dm)


def client_tensors(dm, spec) -> tuple:
    """``(audio, labels, cond)`` of a client's training samples (all its classes)."""
    data = dm.data
    idx = dm.client(spec.id).indices["train"]
    return data.audio[idx], data.labels[idx], data.cond


def raw_train(
    dm,
    dims: dict,
    rounds: int,
    local_epochs: int,
    batch_size: int,
    best: bool,
    seed: int = 0,
    lr: float = 1e-3,
) -> tuple[float, float]:
    """The same math as the federated fit of a unified generator (shared), in a plain PyTorch loop.

    Noisy-encoder VAE loss with the age schedule, per-batch mean, grad clip 5.0, AdamW. ``best``: fused
    AdamW and a rescale only when the norm is over the limit (what the module does); otherwise the
    original system's default AdamW and ``clip_grad_norm_``. Returns ``(seconds, samples)``.
    """
    import torch

    from a2vgen.nn.cvae import ConditionalVAE
    from a2vgen.nn.loss import VAELossSchedule, vae_loss_terms

    torch.manual_seed(seed)
    net = ConditionalVAE(dm.audio_shape, dm.cond_shapes, **dims)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5, fused=best)
    schedule = VAELossSchedule()
    age = torch.zeros((), dtype=torch.long)
    clients = [client_tensors(dm, spec) for spec in dm.clients]
    params = list(net.parameters())
    samples = 0
    start = time.perf_counter()
    for _ in range(rounds):
        for audio, labels, cond in clients:
            for _ in range(local_epochs):
                beta, sim = schedule.beta(age), schedule.sim_weight(age)
                for rows in torch.randperm(len(labels)).split(batch_size):
                    a = audio[rows]
                    classes, index = labels[rows].unique(return_inverse=True)  # encode each class once
                    noisy = a + 0.1 * torch.randn_like(a)
                    recon, mu, logvar, *_ = net(a, [t[classes] for t in cond], encoder_input=noisy, cond_index=index)
                    parts = vae_loss_terms(recon, a, mu, logvar)
                    loss = (parts["mse"] + beta * parts["kl"] + sim * parts["cos"]).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if best:
                        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
                        if norm > 5.0:
                            torch.nn.utils.clip_grads_with_norm_(params, 5.0, norm)
                    else:
                        torch.nn.utils.clip_grad_norm_(params, 5.0)
                    opt.step()
                    samples += len(rows)
                age += 1
    return time.perf_counter() - start, float(samples)


def raw_stacked_train(dm, dims: dict, keys: int, batch_size: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """The best case of training ``keys`` generators in one batched step: their weights stacked once
    (``torch.func.stack_module_state``) and run by the network's own batched forward (``stacked_forward``, as
    the fit runs it), ``batch_size`` samples each, the loss of :func:`raw_train` summed over keys, one fused
    AdamW over the stacked weights (no per-key gradient clipping, no calibration, no Lightning). An upper
    bound for the fit of per-class generators whose classes hold ``batch_size`` clips. Returns
    ``(seconds, samples)`` of ``steps`` steps after one warm-up step."""
    import torch
    from torch.func import stack_module_state

    from a2vgen.nn.cvae import ConditionalVAE
    from a2vgen.nn.loss import vae_loss_terms

    torch.manual_seed(seed)
    nets = [ConditionalVAE(dm.audio_shape, dm.cond_shapes, **dims) for _ in range(keys)]
    params, buffers = stack_module_state(nets)
    params = {name: p.detach().requires_grad_() for name, p in params.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, weight_decay=1e-5, fused=True)
    audio, labels, cond = client_tensors(dm, dm.clients[0])
    rows = torch.randint(len(labels), (keys, batch_size))
    a, cls = audio[rows], labels[rows]  # [K, B, L, D], [K, B]
    cond = [t[cls[:, 0]][:, None] for t in cond]  # one class row per key: [K, 1, ...]
    index = torch.zeros(keys, batch_size, dtype=torch.long)
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        out = nets[0].stacked_forward(
            params, buffers, a, cond, encoder_input=a + 0.1 * torch.randn_like(a), cond_index=index
        )
        parts = vae_loss_terms(*(t.flatten(0, 1) for t in (out.recon, out.target, out.mu, out.logvar)))
        total = (parts["mse"] + 0.01 * parts["kl"] + 0.01 * parts["cos"]).view(keys, batch_size).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    return time.perf_counter() - start, float(steps * keys * batch_size)


def add_tests_to_path() -> None:
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def two_client_datamodule(spec: dict):
    """The demo's 10 classes split over two clients (5 classes each), sized by ``spec``."""
    from a2vgen.data.clients import ClientSpec
    from a2vgen.data.demo import DEMO_CLASSES

    clients = [ClientSpec("0", classes=DEMO_CLASSES[:5]), ClientSpec("1", classes=DEMO_CLASSES[5:])]
    return datamodule(demo_source(spec["smoke"], 10, spec["train_per_class"]), clients)


def throughput_table(script: str, run_contender, specs: list[dict], args, baseline: str, title: str, ratio: str):
    """Run ``specs`` in alternation, print samples/s and the ratio to ``baseline``; return the rows."""
    repeats = 1 if args.smoke else args.repeats
    res = alternate(script, run_contender, specs, repeats, args.smoke or args.inprocess)
    base = res[baseline]["samples_per_s"]
    rows = [
        [name, r["samples"], r["seconds"], r["samples_per_s"], r["samples_per_s"] / base, r["runs"], noisy(r)]
        for name, r in res.items()
    ]
    print_table(title, ["contender", "samples", "seconds", "samples/s", ratio, "runs", "noisy"], rows)
    return rows
