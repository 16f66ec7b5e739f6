"""The package's floors: every import goes down (or stays in its own package), none goes up."""

import ast
from pathlib import Path

import a2vgen

ROOT = Path(a2vgen.__file__).parent

# lower number = lower floor; a module may import its own package and packages on lower floors only
FLOORS = {
    "errors": 0, "io": 0, "seeding": 0, "lightning_adapter": 0, "plots": 0, "batch": 0, "allocator": 0,
    "console": 0,
    "nn": 1, "encoders": 1, "metrics": 1,
    "modules": 2, "data": 2,
    "federation": 3,
    "callbacks": 4,
    "trainer": 5,
    "export": 6, "report": 6,
    "cli": 7, "flower": 7,
}  # fmt: skip
# the CLI dispatches to the Flower app and the Flower app builds runs through the CLI's parser
SAME_FLOOR = {("cli", "flower"), ("flower", "cli")}
# kept for user code only: ``a2vgen.federation.FederatedTrainer`` resolves lazily to ``a2vgen.trainer``
COMPAT = {("federation/__init__.py", "trainer")}


def imports() -> list[tuple[str, str, str]]:
    """``(file, its package, imported package)`` for every import of an a2vgen module."""
    found = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        package = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "a2vgen" and len(parts) > 1:
                    found.append((rel.as_posix(), package, parts[1]))
    return found


def test_every_package_has_a_floor():
    packages = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert packages - {"__init__", "__pycache__"} == set(FLOORS)


def test_imports_only_go_down():
    upward = [
        f"{file} imports a2vgen.{target}"
        for file, package, target in imports()
        if target != package
        and FLOORS[target] >= FLOORS[package]
        and (package, target) not in SAME_FLOOR
        and (file, target) not in COMPAT
    ]
    assert not upward, upward


def test_federation_never_imports_callbacks_and_modules_never_import_data_or_federation():
    edges = {(package, target) for _, package, target in imports()}
    assert ("federation", "callbacks") not in edges
    assert not {("modules", "data"), ("modules", "federation"), ("modules", "callbacks")} & edges
    assert not any(package == "nn" and target != "nn" for package, target in edges)


def test_checkpoint_files_are_read_in_one_place():
    readers = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if "torch.load(" in p.read_text()]
    assert readers == ["federation/checkpoint.py"]
