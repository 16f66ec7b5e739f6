"""A generator type of one's own through fit / validate / report / export / load / sample, and loading
that never runs code a file names (exports, checkpoints, the CLI), registries and entry points."""

import csv
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from a2vgen.callbacks import RoundCheckpoint
from a2vgen.cli import main
from a2vgen.data.clients import ClientSpec
from a2vgen.export import export_bank, load_exported, load_module
from a2vgen.modules import CheckpointMismatchError, PerClassGenerator
from a2vgen.nn import GENERATORS, ConditionEncoder, Registry, UnknownTypeError, register_generator
from a2vgen.report import write_report
from conftest import module_for, small_datamodule
from federation_helpers import federated_fit

CLIENTS = [ClientSpec("0", classes=["dog", "rain"]), ClientSpec("1", classes=["dog"])]


@register_generator(name="test.DiagonalGaussian")
class DiagonalGaussian(nn.Module):
    """``N(mean(cond), diag(exp(log_std(cond))²))`` over flattened tokens: no latent, no VAE parts."""

    def __init__(self, audio_shape, cond_shapes, width=8):
        super().__init__()
        self.config = {"audio_shape": list(audio_shape), "cond_shapes": cond_shapes, "width": width}
        self.audio_shape = tuple(audio_shape)
        self.cond = ConditionEncoder(cond_shapes, width)
        self.head = nn.Linear(width, 2 * math.prod(audio_shape))

    def forward(self, cond, cond_index=None):
        c = self.cond(cond)
        return self.head(c if cond_index is None else c[cond_index]).chunk(2, dim=-1)

    @torch.no_grad()
    def sample(self, n, cond, generator=None, cond_index=None):
        if cond_index is None and cond[0].shape[0] == 1:
            cond_index = torch.zeros(n, dtype=torch.long)
        mean, log_std = self(cond, cond_index)
        return (mean + log_std.exp() * torch.randn(mean.shape, generator=generator)).view(n, *self.audio_shape)


class GaussianGenerator(PerClassGenerator):
    def build_network(self, key):
        return DiagonalGaussian(self.audio_shape, self.cond_shapes)

    def compute_loss(self, net, audio, cond, age, cond_index=None):
        mean, log_std = net(cond, cond_index)
        x = audio.flatten(1)
        nll = (0.5 * ((x - mean) / log_std.exp()).pow(2) + log_std).mean(1)
        return {"loss": nll, "nll": nll, "spread": log_std.exp().mean(1)}


def test_custom_generator_with_its_own_loss_parts_through_fit_validate_report_export_load_sample(tmp_path):
    dm = small_datamodule(CLIENTS)
    module = module_for(GaussianGenerator, dm)
    logger = CSVLogger(tmp_path, name="run")
    checkpoint = RoundCheckpoint(dirpath=str(tmp_path / "run" / "version_0" / "checkpoints"))
    trainer = federated_fit(module, dm, callbacks=[checkpoint], max_rounds=2, logger=logger)
    logger.finalize("success")
    run = Path(logger.log_dir)
    with open(run / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {"train/0/dog/nll", "train/0/dog/spread", "train/0/rain/loss", "train/1/dog/samples"} <= columns
    assert not {c for c in columns if c.endswith(("/mse", "/kl", "/cos"))}
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert {f"val/{name}/dataloader_idx_0" for name in ("dog/nll", "dog/spread", "rain/loss")} <= set(metrics)
    page = write_report(run).read_text()
    assert "nll" in page and "spread" in page and (run / "report" / "loss_parts.png").is_file()

    files = export_bank(module, module.bank, tmp_path / "exports")
    meta = json.loads((tmp_path / "exports" / "dog.json").read_text())
    assert meta["network"] == {"type": "test.DiagonalGaussian", "config": module.bank["dog"].net.config}
    net, meta = load_exported(tmp_path / "exports" / "dog")
    g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
    torch.testing.assert_close(net.sample(4, meta["cond"]["dog"], generator=g1), module.sample("dog", 4, generator=g2))
    loaded, _ = load_module(run / "checkpoints" / "last.ckpt")
    assert type(loaded) is GaussianGenerator and len(files) == 4
    for p, q in zip(module.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(p, q)


def test_compute_loss_without_loss_is_named():
    class NoLoss(GaussianGenerator):
        def compute_loss(self, net, audio, cond, age, cond_index=None):
            return {"nll": super().compute_loss(net, audio, cond, age, cond_index)["nll"]}

    dm = small_datamodule(CLIENTS)
    module = module_for(NoLoss, dm)
    batch = next(iter(dm.client("0").dataloader("train", ["dog"])))
    with pytest.raises(KeyError, match=r"compute_loss must return per-sample parts with 'loss'.*\['nll'\]"):
        module.shared_step(batch)


def test_network_without_the_contract_is_refused_when_built():
    class Plain(PerClassGenerator):
        def build_network(self, key):
            return nn.Linear(2, 2)

    with pytest.raises(TypeError, match=r"build_network\('dog'\) returned a Linear without `config`"):
        module_for(Plain, small_datamodule(CLIENTS))


# ---------------------------------------------------------------------- nothing a file names is run
@pytest.fixture
def trap(tmp_path, monkeypatch):
    """A module ``a2vgen_trap_payload`` on the path that would create ``sentinel`` when imported."""
    sentinel = tmp_path / "PWNED"
    (tmp_path / "a2vgen_trap_payload.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).touch()\nclass Net:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield sentinel
    assert not sentinel.exists(), "a name read from a file was imported"
    assert "a2vgen_trap_payload" not in sys.modules


def exported_dog(tmp_path) -> Path:
    dm = small_datamodule([ClientSpec("0", classes=["dog"])])
    module = module_for(PerClassGenerator, dm)
    export_bank(module, module.bank, tmp_path / "exp")
    return tmp_path / "exp" / "dog.json"


@pytest.mark.parametrize(
    ("fmt", "network"),
    [
        ("a2vgen-generator/1", {"class_path": "subprocess.run", "init_args": {"args": ["touch", "PWNED"]}}),
        ("a2vgen-generator/2", {"type": "subprocess.run", "config": {"args": ["touch", "PWNED"]}}),
        ("a2vgen-generator/2", {"type": "a2vgen_trap_payload.Net", "config": {}}),
    ],
)
def test_export_naming_a_harmful_callable_or_unknown_module_is_refused(tmp_path, trap, fmt, network):
    path = exported_dog(tmp_path)
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(meta | {"format": fmt, "network": network}))
    name = network.get("type") or network["class_path"]
    with pytest.raises(UnknownTypeError, match=rf"dog.json: unknown generator network '{name}' \(nothing was imported\); decorate its class with @a2vgen.nn.register_generator"):  # fmt: skip
        load_exported(path)


def test_old_exports_of_the_builtin_vae_still_load(tmp_path):
    path = exported_dog(tmp_path)
    meta = json.loads(path.read_text())
    network = {"class_path": "a2vgen.nn.cvae.ConditionalVAE", "init_args": meta["network"]["config"]}
    path.write_text(json.dumps(meta | {"format": "a2vgen-generator/1", "network": network}))
    net, _ = load_exported(path)
    assert type(net).__name__ == "ConditionalVAE"


@pytest.fixture
def checkpoint(tmp_path):
    dm = small_datamodule([ClientSpec("0", classes=["dog", "rain"])])
    module = module_for(PerClassGenerator, dm)
    federated_fit(module, dm, callbacks=[RoundCheckpoint(dirpath=str(tmp_path / "ckpt"))], max_rounds=1)
    return tmp_path / "ckpt" / "last.ckpt"


def tamper(path: Path, out: Path, meta=None, hparams=None) -> Path:
    ckpt = torch.load(path, weights_only=True)
    ckpt["a2vgen"].update(meta or {})
    ckpt["hyper_parameters"].update(hparams or {})
    torch.save(ckpt, out)
    return out


def test_checkpoint_naming_an_unknown_module_is_refused_before_any_import(checkpoint, trap, capsys):
    bad = tamper(checkpoint, trap.parent / "bad.ckpt", meta={"class_path": "a2vgen_trap_payload.Net"})
    with pytest.raises(UnknownTypeError, match="unknown generator module 'a2vgen_trap_payload.Net'.*--imports"):
        load_module(bad)
    for tool in ("export", "sample"):
        with pytest.raises(SystemExit) as exit_:
            main([tool, "--ckpt_path", str(bad)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "bad.ckpt: unknown generator module 'a2vgen_trap_payload.Net' (nothing was imported)" in err


def test_cli_checks_a_checkpoint_before_lightning_reads_its_class_path(checkpoint, trap, capsys):
    bad = tamper(checkpoint, trap.parent / "bad.ckpt", hparams={"_class_path": "a2vgen_trap_payload.Net"})
    config = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--config", config, "--ckpt_path", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"class_path: metadata .*PerClassGenerator', hyper-parameters 'a2vgen_trap_payload.Net'", err), err


def test_checkpoint_metadata_mismatch_is_named(checkpoint, tmp_path):
    wrong = tamper(checkpoint, tmp_path / "w.ckpt", meta={"granularity": "unified"})
    with pytest.raises(CheckpointMismatchError, match="granularity: checkpoint has 'unified', PerClassGenerator is 'per_class'"):  # fmt: skip
        load_module(wrong)
    wrong = tamper(checkpoint, tmp_path / "w.ckpt", meta={"classes": ["dog", "cat"]})
    with pytest.raises(CheckpointMismatchError, match=r"classes: metadata \['dog', 'cat'\], hyper-parameters \['dog'"):
        load_module(wrong)


def test_user_module_loads_from_a_new_process_only_when_imported_by_name(checkpoint, tmp_path, monkeypatch, caplog):
    """What a fresh ``a2vgen export`` sees: a class not imported yet is refused until ``--imports`` names it."""
    (tmp_path / "a2vgen_user_plugin.py").write_text(
        "from a2vgen.modules import PerClassGenerator\n\nclass Mine(PerClassGenerator):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    bad = tamper(checkpoint, tmp_path / "mine.ckpt", meta={"class_path": "a2vgen_user_plugin.Mine"})
    with pytest.raises(SystemExit):
        main(["export", "--ckpt_path", str(bad), "--out_dir", "out"])
    assert "a2vgen_user_plugin" not in sys.modules
    main(["export", "--ckpt_path", str(bad), "--out_dir", "out", "--imports", "[a2vgen_user_plugin]"])
    assert (tmp_path / "out" / "dog.json").is_file()
    monkeypatch.delitem(sys.modules, "a2vgen_user_plugin")


# ---------------------------------------------------------------------- registries and entry points
def test_generator_registered_through_an_entry_point_loads(tmp_path, monkeypatch):
    (tmp_path / "a2vgen_ep_plugin.py").write_text(
        "import torch\n\n"
        "class EntryPointNet(torch.nn.Module):\n"
        "    def __init__(self, size):\n"
        "        super().__init__()\n"
        "        self.config = {'size': size}\n"
        "        self.weight = torch.nn.Parameter(torch.randn(size))\n"
        "    def sample(self, n, cond=None, generator=None, cond_index=None):\n"
        "        return self.weight.expand(n, 1, -1)\n"
    )
    info = tmp_path / "a2vgen_ep_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: a2vgen-ep-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[a2vgen.generators]\nEntryPointNet = a2vgen_ep_plugin:EntryPointNet\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "a2vgen_ep_plugin" not in sys.modules
    cls = GENERATORS.get("EntryPointNet")
    assert cls.__module__ == "a2vgen_ep_plugin" and GENERATORS.name_of(cls) == "EntryPointNet"

    class EntryPointGenerator(PerClassGenerator):
        def build_network(self, key):
            return cls(size=5)

    module = module_for(EntryPointGenerator, small_datamodule([ClientSpec("0", classes=["dog"])]))
    export_bank(module, module.bank, tmp_path / "exp")
    net, _ = load_exported(tmp_path / "exp" / "dog")
    assert torch.equal(net.sample(2), module.sample("dog", 2))
    monkeypatch.delitem(sys.modules, "a2vgen_ep_plugin")


def test_registry_names_aliases_and_conflicts():
    registry = Registry("thing", "a2vgen.test-none", "register it")

    @registry.register(name="Thing", aliases=["old.place.Thing"])
    class Thing:
        pass

    assert registry.get("Thing") is registry.get("old.place.Thing") is registry.get(f"{__name__}.{Thing.__qualname__}")
    with pytest.raises(ValueError, match="'Thing' is already registered"):
        registry.register(DiagonalGaussian, name="Thing")
    with pytest.raises(UnknownTypeError, match=r"unknown thing 'os.system' \(nothing was imported\); register it"):
        registry.get("os.system")
    with pytest.raises(UnknownTypeError, match="is not registered; register it"):
        registry.name_of(DiagonalGaussian)


@pytest.mark.parametrize("name", ["ConditionalVAE", "ConditionalFlow"])
def test_builtin_network_config_lists_every_constructor_argument_and_rebuilds_it(name):
    import inspect

    cls = GENERATORS.get(name)
    net = cls([4, 16], [[6, 8]], hidden_dim=24, cond_width=8)
    assert list(net.config) == list(inspect.signature(cls).parameters)  # a new argument must be recorded
    rebuilt = cls(**json.loads(json.dumps(net.config)))
    assert rebuilt.config == net.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_export_whose_config_the_network_does_not_take_is_named(tmp_path):
    path = exported_dog(tmp_path)
    meta = json.loads(path.read_text())
    meta["network"]["config"]["pooled"] = True  # an option of an earlier version of the VAE
    path.write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"dog.json: ConditionalVAE does not take this config .*'pooled'.*another version"
    ):
        load_exported(path)
