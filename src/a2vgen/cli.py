"""The ``a2vgen`` command: LightningCLI subcommands (fit, validate, test, predict) plus sample, export, embed,
report."""

from __future__ import annotations

import json
import logging
import operator
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from a2vgen.console import log_to_stderr
from a2vgen.data.datamodule import FederatedDataModule
from a2vgen.errors import UserError
from a2vgen.federation.checkpoint import module_class, read_checkpoint
from a2vgen.federation.runs import run_of_checkpoint
from a2vgen.lightning_adapter import CheckpointHparamsHook
from a2vgen.modules.base import BaseGeneratorModule, CheckpointMismatchError
from a2vgen.modules.registry import import_plugins
from a2vgen.trainer import FederatedTrainer

IMPORTS_HELP = "modules defining your generator types, imported first (e.g. [my_generators]); files never name code"

log = logging.getLogger("a2vgen")

LIGHTNING = ("fit", "validate", "test", "predict")
CONFIG_KEY = "a2vgen_config"  # the run's config (YAML text) inside its checkpoints
USAGE = """usage: a2vgen [--debug] {fit,validate,test,predict,sample,export,embed,report,flower-app} ...

  fit        train the generators of a federation (a2vgen fit --config configs/demo.yaml)
  validate   losses per key and client on every client's val split (--ckpt_path alone works)
  test       the same on the test split
  predict    synthetic samples of every class into the run folder (--ckpt_path alone works)
  sample     synthetic embeddings per class from a checkpoint
  export     one safetensors + JSON file per generator key from a checkpoint
  embed      build the embedding cache of a raw dataset (ESC-50)
  report     plots and tables of a run's evaluation
  flower-app a Flower app folder for a fit config, to run across machines (pip install a2vgen[flower])

  --debug (or A2VGEN_DEBUG=1) shows the traceback of a user error.
  a2vgen <command> --help lists a command's options."""


class RunConfig(SaveConfigCallback):
    """Save the run's config as ``config.yaml`` in its run folder when fitting, and inside every checkpoint
    (so that ``validate``/``test``/``predict``/``sample`` work from ``--ckpt_path`` alone)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        checkpoint[CONFIG_KEY] = yaml.safe_dump({k: config[k] for k in ("seed_everything", "trainer", "model", "data")})


class A2VGenCLI(CheckpointHparamsHook, LightningCLI):
    """LightningCLI with the data's classes and shapes linked into the generator module, and the adapter
    trained exactly when the run is not generator-only (full mode). A checkpoint's hyperparameters never
    silently replace the command line: the trainer compares them (see :mod:`a2vgen.federation.compat`)."""

    def add_arguments_to_parser(self, parser) -> None:
        for name in ("classes", "audio_shape", "cond_shapes", "class_cond", "audio_stats"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.link_arguments("trainer.generator_only", "model.init_args.train_adapter", compute_fn=operator.not_)

    def check_ckpt_path(self, path: str | None) -> None:
        """Lightning would overwrite the config with the checkpoint's hyperparameters (importing the
        ``_class_path`` they name): instead the trainer compares them, and the checkpoint's class is checked
        against the module registry here, before anything is imported."""
        if path and Path(path).is_file():
            module_class(path, read_checkpoint(path))


def run_lightning(args: list[str] | None, run: bool = True) -> A2VGenCLI:
    """Build (and by default run) the LightningCLI; ``run=False`` parses without a subcommand."""
    return A2VGenCLI(
        model_class=BaseGeneratorModule,
        subclass_mode_model=True,
        datamodule_class=FederatedDataModule,
        trainer_class=FederatedTrainer,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def config_from_checkpoint(args: list[str]) -> list[str]:
    """``validate``/``test``/``predict --ckpt_path C`` without ``--config``: use the config stored in ``C``."""
    if len(args) < 2 or args[0] not in LIGHTNING[1:] or any(a in ("--config", "-c", "--help", "-h") for a in args):
        return args
    ckpt = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--ckpt_path"), None)
    ckpt = ckpt or next((a.split("=", 1)[1] for a in args if a.startswith("--ckpt_path=")), None)
    if ckpt is None:
        return args
    stored = read_checkpoint(ckpt, mmap=True, metadata=False).get(CONFIG_KEY)
    if stored is None:
        raise UserError(f"{ckpt} holds no run config (written before a2vgen stored it): add --config <fit config>")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, prefix="a2vgen-ckpt-config-") as file:
        file.write(stored)
    return [args[0], "--config", file.name, *args[1:]]


def beside(ckpt_path: str) -> Path:
    """The run folder of a checkpoint (``<run>/checkpoints/x.ckpt``), else the checkpoint's folder."""
    return run_of_checkpoint(ckpt_path) or Path(ckpt_path).parent


def sample_command(args: list[str]) -> None:
    from a2vgen.export import write_prompt_samples, write_samples

    parser = ArgumentParser(prog="a2vgen sample", description="Synthetic embeddings per class from a checkpoint.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by a2vgen fit")
    parser.add_argument("--classes", type=list[str] | None, default=None, help="classes to sample (default: all)")
    parser.add_argument("--num_samples", type=int, default=16, help="samples per class")
    parser.add_argument(
        "--out", type=str | None, default=None,
        help="output file (a2vgen embedding layout; default: samples.safetensors in the checkpoint's run folder)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--prompt", type=str | None, default=None,
        help="sample for a free-text prompt (a class never seen, too) from the generator of --classes[0], "
        "or the unified generator; needs --pipeline for its text encoders",
    )  # fmt: skip
    parser.add_argument("--pipeline", type=str | None, default=None, help="diffusers model id or folder")
    parser.add_argument("--imports", type=list[str], default=[], help=IMPORTS_HELP)
    cfg = parser.parse_args(args)
    import_plugins(cfg.imports)
    if cfg.num_samples < 1:
        raise UserError(f"--num_samples must be >= 1 (got {cfg.num_samples})")
    cfg.out = cfg.out or str(beside(cfg.ckpt_path) / "samples.safetensors")
    if cfg.prompt is not None:
        if not cfg.pipeline:
            raise ValueError("--prompt needs --pipeline (the text encoders that define the conditioning)")
        path = write_prompt_samples(
            cfg.ckpt_path, cfg.out, cfg.prompt, cfg.pipeline, cfg.classes, cfg.num_samples, cfg.seed
        )
        print(f"wrote {path}")
        return
    for path in write_samples(cfg.ckpt_path, cfg.out, cfg.classes, cfg.num_samples, cfg.seed):
        print(f"wrote {path}")


def export_command(args: list[str]) -> None:
    from a2vgen.export import export_checkpoint

    parser = ArgumentParser(prog="a2vgen export", description="One safetensors + JSON file per generator key.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by a2vgen fit")
    parser.add_argument(
        "--out_dir",
        type=str | None,
        default=None,
        help="output folder (default: exports in the checkpoint's run folder)",
    )
    parser.add_argument("--imports", type=list[str], default=[], help=IMPORTS_HELP)
    cfg = parser.parse_args(args)
    import_plugins(cfg.imports)
    cfg.out_dir = cfg.out_dir or str(beside(cfg.ckpt_path) / "exports")
    written = export_checkpoint(cfg.ckpt_path, cfg.out_dir)
    untrained = sorted(p.stem for p in written if p.suffix == ".json" and json.loads(p.read_text()).get("age") == 0)
    if untrained:
        log.warning("never trained (age 0, no class seen): %s; their exports hold initial weights", untrained)
    print(f"wrote {len(written)} files to {cfg.out_dir}")


def embed_command(args: list[str]) -> None:
    from a2vgen.data.cache import EmbedConfig, build_embedding_cache

    parser = ArgumentParser(prog="a2vgen embed", description="Build the embedding cache of a raw dataset (ESC-50).")
    parser.add_argument("--config", action="config")
    parser.add_class_arguments(EmbedConfig, "embed")
    cfg = parser.parse_args(args)
    init = parser.instantiate_classes(cfg)
    path = build_embedding_cache(init.embed)
    print(f"wrote {path}")


def report_command(args: list[str]) -> None:
    from a2vgen.report import report_command as write

    write(args)


def flower_app_command(args: list[str]) -> None:
    try:
        from a2vgen.flower.bundle import flower_app_command as write
    except ModuleNotFoundError as err:
        if err.name not in ("flwr", "tomli_w"):
            raise
        raise UserError("a2vgen flower-app needs Flower: pip install 'a2vgen[flower]'") from err
    write(args)


TOOLS: dict[str, Callable[[list[str]], None]] = {
    "flower-app": flower_app_command,
    "report": report_command,
    "sample": sample_command,
    "export": export_command,
    "embed": embed_command,
}


# Mistakes in what the user asked for: one line, exit 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError, CheckpointMismatchError, FileNotFoundError, ValueError, KeyError, ImportError,
               MisconfigurationException, NotImplementedError)  # fmt: skip
REFUSED_ARGS = {
    "--optimizer": "a2vgen builds one AdamW per generator bank (its per-key reset drops that optimizer's state): "
    "set model.init_args.lr / weight_decay, or override build_optimizer in a module subclass",
    "--lr_scheduler": "learning-rate schedulers are not supported by the federated loop yet",
}


def _run(args: list[str], from_argv: bool) -> None:
    if args and args[0] in TOOLS:
        TOOLS[args[0]](args[1:])
        return
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    for flag, why in REFUSED_ARGS.items():
        if any(a == flag or a.startswith(flag + "=") or a.startswith(flag + ".") for a in args):
            raise UserError(f"{flag} is not supported: {why}")
    args = config_from_checkpoint(args)
    if from_argv:
        sys.argv[1:] = args  # LightningCLI reads sys.argv (it warns when given both)
    run_lightning(None if from_argv else args)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``a2vgen`` console script (returns ``None``; errors exit non-zero).

    User errors print ``a2vgen <command>: error: <what, where, how to fix>`` and exit 2; ``--debug`` (or
    ``A2VGEN_DEBUG=1``) prints their traceback too. Internal errors keep their tracebacks.
    """
    from_argv = args is None
    args = list(sys.argv[1:] if from_argv else args)
    debug = os.environ.get("A2VGEN_DEBUG", "") not in ("", "0") or "--debug" in args
    if "--debug" in args:
        args.remove("--debug")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # modules the user names (--model x.Y, --imports) load from here
    log_to_stderr()
    try:
        _run(args, from_argv)
    except USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        command = args[0] if args else ""
        sys.stderr.write(f"a2vgen {command}: error: {_message(err)}\n")
        if not debug:
            sys.stderr.write("(run with --debug or A2VGEN_DEBUG=1 for the traceback)\n")
        raise SystemExit(2) from None


JSONARGPARSE_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def _message(err: BaseException) -> str:
    """The first line of an error's message; errors re-raised by jsonargparse are unwrapped to their cause."""
    while err.__cause__ is not None and (
        type(err).__module__.startswith("jsonargparse") or str(err).startswith(JSONARGPARSE_WRAPPERS)
    ):
        err = err.__cause__
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    line = str(text).strip().splitlines()[0] if str(text).strip() else type(err).__name__
    return line if len(line) <= 800 else line[:800] + " ..."


if __name__ == "__main__":
    main()
