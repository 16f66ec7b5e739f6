"""Renamed classes and modules: the old names still import, and configs naming them still build."""

import importlib

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback

from a2vgen.callbacks.exports import ExportGenerators
from a2vgen.federation import PreviewPipeline


def build(name: str, base: type, class_path: str):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument(f"--{name}", type=base)
    config = parser.parse_args([f"--{name}", f'{{"class_path": "{class_path}"}}'])
    return getattr(parser.instantiate_classes(config), name)


@pytest.mark.parametrize("path", ["a2vgen.federation.server.DiffusionServer", "a2vgen.federation.DiffusionServer"])
def test_diffusion_server_is_the_preview_pipeline(path):
    module, name = path.rsplit(".", 1)
    with pytest.warns(DeprecationWarning, match="PreviewPipeline"):
        assert getattr(importlib.import_module(module), name) is PreviewPipeline
    assert type(build("server", PreviewPipeline, path)) is PreviewPipeline


@pytest.mark.parametrize("path", ["a2vgen.callbacks.export.ExportGenerators", "a2vgen.callbacks.ExportGenerators"])
def test_export_callback_keeps_its_old_class_path(path):
    assert type(build("callback", Callback, path)) is ExportGenerators
