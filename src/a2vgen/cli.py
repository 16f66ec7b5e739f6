"""The ``a2vgen`` command: LightningCLI subcommands (fit, validate, test, predict) plus sample, export, embed,
report."""

from __future__ import annotations

import logging
import operator
import os
import sys
from collections.abc import Callable
from pathlib import Path

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningCLI

from a2vgen.data.datamodule import FederatedDataModule
from a2vgen.federation.trainer import FederatedTrainer
from a2vgen.modules.base import BaseGeneratorModule
from a2vgen.modules.registry import import_plugins

IMPORTS_HELP = "modules defining your generator types, imported first (e.g. [my_generators]); files never name code"

log = logging.getLogger("a2vgen")


class A2VGenCLI(LightningCLI):
    """LightningCLI with the data's classes and shapes linked into the generator module, and the adapter
    trained exactly when the run is not generator-only (full mode)."""

    def add_arguments_to_parser(self, parser) -> None:
        for name in ("classes", "audio_shape", "cond_shapes", "class_cond", "audio_stats"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.link_arguments("trainer.generator_only", "model.init_args.train_adapter", compute_fn=operator.not_)

    def _parse_ckpt_path(self) -> None:
        """Check a checkpoint's class against the module registry before LightningCLI reads its
        hyper-parameters, whose ``_class_path`` jsonargparse would import."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            from a2vgen.export import module_class, read_checkpoint

            module_class(path, read_checkpoint(path))
        super()._parse_ckpt_path()


def run_lightning(args: list[str] | None, run: bool = True) -> A2VGenCLI:
    """Build (and by default run) the LightningCLI; ``run=False`` parses without a subcommand."""
    return A2VGenCLI(
        model_class=BaseGeneratorModule,
        subclass_mode_model=True,
        datamodule_class=FederatedDataModule,
        trainer_class=FederatedTrainer,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def sample_command(args: list[str]) -> None:
    from a2vgen.export import write_prompt_samples, write_samples

    parser = ArgumentParser(prog="a2vgen sample", description="Synthetic embeddings per class from a checkpoint.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by a2vgen fit")
    parser.add_argument("--classes", type=list[str] | None, default=None, help="classes to sample (default: all)")
    parser.add_argument("--num_samples", type=int, default=16, help="samples per class")
    parser.add_argument("--out", type=str, default="samples.safetensors", help="output file (a2vgen embedding layout)")
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
    parser.add_argument("--out_dir", type=str, default="exports", help="output folder")
    parser.add_argument("--imports", type=list[str], default=[], help=IMPORTS_HELP)
    cfg = parser.parse_args(args)
    import_plugins(cfg.imports)
    written = export_checkpoint(cfg.ckpt_path, cfg.out_dir)
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


TOOLS: dict[str, Callable[[list[str]], None]] = {
    "report": report_command,
    "sample": sample_command,
    "export": export_command,
    "embed": embed_command,
}


def _configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[a2vgen] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``a2vgen`` console script (returns ``None``; errors exit non-zero)."""
    from_argv = args is None
    args = list(sys.argv[1:] if from_argv else args)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # modules the user names (--model x.Y, --imports) load from here
    _configure_logging()
    if args and args[0] in TOOLS:
        try:
            TOOLS[args[0]](args[1:])
        except (FileNotFoundError, ValueError, KeyError, ImportError, TypeError) as err:
            log.error("%s: %s", args[0], err.args[0] if isinstance(err, KeyError) else err)
            raise SystemExit(1) from err
        return
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: a2vgen {fit,validate,test,predict,sample,export,embed,report} ...  (see: a2vgen <command> --help)"
        )
    run_lightning(None if from_argv else args)
