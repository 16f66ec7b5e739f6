"""``a2vgen flower-app``: write a Flower app folder (one ``pyproject.toml`` holding the resolved config)."""

from __future__ import annotations

from pathlib import Path

import tomli_w
import yaml

from a2vgen.errors import UserError
from a2vgen.flower.settings import FlowerSettings

COMPONENTS = {"serverapp": "a2vgen.flower.apps:server_app", "clientapp": "a2vgen.flower.apps:client_app"}


def enclosing_repository(folder: Path) -> Path | None:
    """The git work tree holding ``folder`` (``None`` outside any)."""
    for parent in (folder, *folder.parents):
        if (parent / ".git").exists():
            return parent
    return None


def absolute_log_dirs(config: dict, base: Path) -> None:
    """Make the loggers' relative ``save_dir`` absolute against ``base`` (the server may start elsewhere)."""
    loggers = config["trainer"].get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = logger.get("init_args", {}) if isinstance(logger, dict) else {}
        if args.get("save_dir") and not Path(args["save_dir"]).is_absolute():
            args["save_dir"] = str((base / args["save_dir"]).resolve())


def write_app(config: str, out: Path, name: str) -> Path:
    """Write the app folder ``out`` for the resolved a2vgen ``config`` (YAML text); returns its pyproject."""
    out = out.resolve()
    repository = enclosing_repository(out)
    if repository is not None:
        raise UserError(
            f"--out {out} is inside the repository {repository}: Flower packs every .py/.toml/.md/.yaml/.json file "
            "under the app folder, so write the app outside any repository"
        )
    if out.exists() and any(p.name != "pyproject.toml" for p in out.iterdir()):
        raise UserError(f"--out {out} holds other files: Flower would pack them into the app; use an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    settings = FlowerSettings(config=config)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": name,
            "version": "1.0.0",
            "description": "An a2vgen federation on Flower, written by `a2vgen flower-app`",
            "license": "MIT",
            "dependencies": ["a2vgen[flower]"],
        },
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {"app": {"publisher": "a2vgen", "components": COMPONENTS, "config": settings.run_config()}},
        },
    }
    path = out / "pyproject.toml"
    path.write_text(tomli_w.dumps(project, multiline_strings=True))
    return path


def take_option(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    """The value of ``flag`` (``--flag V`` or ``--flag=V``) and the other arguments."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2 :]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1 :]
    return None, args


USAGE = """usage: a2vgen flower-app --config FIT.yaml [fit overrides, e.g. --trainer.max_rounds 2] --out DIR [--name NAME]

Write a Flower app folder (DIR/pyproject.toml with the resolved config) outside any repository.
Run it with: flwr run DIR CONNECTION  (see README, "Across machines")."""


def flower_app_command(args: list[str]) -> None:
    """``a2vgen flower-app --config X.yaml [overrides] --out DIR [--name NAME]``."""
    from a2vgen.cli import run_lightning

    if not args or "-h" in args or "--help" in args:
        print(USAGE)
        return
    out, args = take_option(args, "--out")
    name, args = take_option(args, "--name")
    if out is None or not any(a == "--config" or a.startswith("--config=") for a in args):
        raise UserError("a2vgen flower-app needs --config <fit config> and --out <app folder>")
    cli = run_lightning(args, run=False)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    config = {k: config[k] for k in ("seed_everything", "trainer", "model", "data") if k in config}
    absolute_log_dirs(config, Path.cwd())
    path = write_app(yaml.safe_dump(config, sort_keys=False), Path(out), name or "a2vgen-federation")
    print(f"wrote {path}; run it with: flwr run {path.parent} <connection>")
