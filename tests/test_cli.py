"""The a2vgen command in-process: shipped configs, presets, sampling/export, README options, errors."""

import csv
import inspect
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
import wandb
import yaml
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.loggers import WandbLogger

from a2vgen.callbacks import RoundCheckpoint
from a2vgen.cli import main, run_lightning
from a2vgen.data.embeddings import load_embeddings
from a2vgen.export import load_exported
from a2vgen.federation.runs import prepare_logger
from a2vgen.lightning_adapter import wandb_init_args
from tiny_models import build_tiny_sd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
SMALL = [
    "--trainer.max_rounds", "2",
    "--data.source.init_args.train_per_class", "6",
    "--data.source.init_args.val_per_class", "2",
    "--data.source.init_args.test_per_class", "2",
    "--model.init_args.hidden_dim", "16",
    "--model.init_args.latent_dim", "8",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_dir(workdir: Path, name: str) -> Path:
    (version,) = (workdir / "runs" / name).glob("version_*")
    return version


def test_every_config_is_shipped():
    assert set(CONFIGS) >= {
        "demo.yaml", "shared_continuous.yaml", "sequential_classes_reset.yaml",
        "per_group.yaml", "independent_fedavg.yaml", "full_mode.yaml",
    }  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_runs_with_size_only_overrides(config, workdir, tmp_path_factory, caplog):
    extra = []
    if config == "full_mode.yaml":
        tiny = build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")  # CLIP states [77, 32]
        extra = ["--trainer.pipeline", str(tiny), "--data.source.init_args.cond_dim", "32",
                 # init_args of the last callback in the list: DiffusionPreviews
                 "--trainer.callbacks.init_args.height", "64", "--trainer.callbacks.init_args.width", "64",
                 "--trainer.callbacks.init_args.num_inference_steps", "2"]  # fmt: skip
    main(["fit", "--config", str(ROOT / "configs" / config), *SMALL, *extra])
    name = config.removesuffix(".yaml")
    out = run_dir(workdir, name)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "exports").glob("*.safetensors"))
    assert (out / "metrics.csv").read_text().count("\n") >= 2
    assert "round 2/2" in caplog.text
    if config == "full_mode.yaml":
        assert len(list((out / "previews" / "round-0002").glob("*.png"))) == 4


def test_callback_preset_composes_onto_a_config(workdir, caplog):
    args = ["fit", "--config", str(ROOT / "configs" / "shared_continuous.yaml"), *SMALL]
    main([*args, "--trainer.callbacks+=" + str(ROOT / "callbacks" / "class_change_reset.yaml")])
    assert "-> reset generator 'unified'" in caplog.text
    saved = (run_dir(workdir, "shared_continuous") / "config.yaml").read_text()
    assert "ClassChangeResetCallback" in saved and "RoundCheckpoint" in saved


def test_sample_and_export_outputs_load_with_the_documented_one_liners(workdir):
    main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), *SMALL])
    ckpt = run_dir(workdir, "demo") / "checkpoints" / "last.ckpt"
    main(
        ["sample", "--ckpt_path", str(ckpt), "--classes", "[dog, rain]", "--num_samples", "5", "--out", "s.safetensors"]
    )
    samples = load_embeddings("s.safetensors")
    assert samples.audio.shape == (10, 4, 768) and samples.classes == ["dog", "rain"]
    assert samples.labels.tolist() == [0] * 5 + [1] * 5 and samples.cond[0].shape == (2, 77, 768)
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", "exp"])
    net, meta = load_exported("exp/dog")
    assert meta["classes"] == ["dog"] and meta["key"] == "dog"
    assert net.sample(3, meta["cond"]["dog"]).shape == (3, 4, 768)
    # the export reproduces the checkpoint's generator exactly
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    from a2vgen.export import load_module

    module, _ = load_module(ckpt)
    torch.testing.assert_close(net.sample(2, meta["cond"]["dog"], generator=g1), module.sample("dog", 2, generator=g2))


def test_independent_run_without_aggregation_samples_and_exports_per_client(workdir):
    args = ["fit", "--config", str(ROOT / "configs" / "independent_fedavg.yaml"), *SMALL]
    main([*args, "--trainer.aggregation", "none"])
    ckpt = run_dir(workdir, "independent_fedavg") / "checkpoints" / "last.ckpt"
    main(["sample", "--ckpt_path", str(ckpt), "--classes", "[dog]", "--num_samples", "2", "--out", "s.safetensors"])
    assert sorted(p.name for p in workdir.glob("s.client-*.safetensors")) == [
        "s.client-0.safetensors", "s.client-1.safetensors",
    ]  # fmt: skip
    exports = {p.name for p in (run_dir(workdir, "independent_fedavg") / "exports").glob("*.json")}
    assert {"client-0.dog.json", "client-1.dog.json", "client-2.helicopter.json"} <= exports


def test_user_subclass_loads_from_the_working_directory(workdir, caplog):
    (workdir / "my_generators.py").write_text(
        "from a2vgen.modules import UnifiedGenerator\n\n"
        "class TaggedGenerator(UnifiedGenerator):\n"
        "    def build_network(self, key):\n"
        "        net = super().build_network(key)\n"
        "        print('built network for', key)\n"
        "        return net\n"
    )
    main(["fit", "--config", str(ROOT / "configs" / "shared_continuous.yaml"), *SMALL,
          "--model", "my_generators.TaggedGenerator", "--model.hidden_dim", "16"])  # fmt: skip
    ckpt = run_dir(workdir, "shared_continuous") / "checkpoints" / "last.ckpt"
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "1", "--out", "s.safetensors"])
    assert load_embeddings("s.safetensors").audio.shape[0] == 10


def readme_options() -> list[str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- options -->")[1].split("<!-- /options -->")[0]
    return re.findall(r"^\| `([a-z_.]+)` \|", table, flags=re.M)


def printed_config(config: str, capsys) -> dict:
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def has_option(config: dict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_option_in_the_readme_table_exists_in_the_parser(capsys):
    options = readme_options()
    assert len(options) > 30
    configs = [printed_config(c, capsys) for c in ("demo.yaml", "per_group.yaml")]
    missing = [o for o in options if not o.startswith("callbacks.") and not any(has_option(c, o) for c in configs)]
    assert missing == []
    from a2vgen import callbacks

    for option in (o for o in options if o.startswith("callbacks.")):
        _, cls, arg = option.split(".")
        assert arg in inspect.signature(getattr(callbacks, cls)).parameters, option


def test_unknown_config_key_is_an_error(workdir, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.max_roundz", "2"])
    assert err.value.code != 0
    assert "max_roundz" in capsys.readouterr().err


def test_unknown_class_names_the_available_ones(workdir, capsys):
    main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), *SMALL])
    ckpt = run_dir(workdir, "demo") / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as err:
        main(["sample", "--ckpt_path", str(ckpt), "--classes", "[unicorn]"])
    assert err.value.code == 2
    assert "a2vgen sample: error: unknown class 'unicorn'; available classes: ['dog'" in capsys.readouterr().err


def test_bad_class_path_is_an_error(workdir, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--model", "nowhere.Generator"])
    assert err.value.code != 0
    assert "nowhere.Generator" in capsys.readouterr().err


def test_missing_checkpoint_is_an_error(workdir, capsys):
    with pytest.raises(SystemExit) as err:
        main(["sample", "--ckpt_path", "missing.ckpt"])
    assert err.value.code == 2 and "a2vgen sample: error: checkpoint not found: missing.ckpt" in capsys.readouterr().err


def test_corrupt_or_foreign_checkpoint_is_an_error(workdir, capsys):
    Path("junk.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, "foreign.ckpt")
    torch.save({"a2vgen": {}, "object": Path("x")}, "objects.ckpt")  # a pickled object: refused, not loaded
    for path, message in [
        ("junk.ckpt", "not a readable checkpoint"),
        ("foreign.ckpt", "not an a2vgen checkpoint"),
        ("objects.ckpt", "holds objects other than tensors and plain values"),
    ]:
        with pytest.raises(SystemExit):
            main(["export", "--ckpt_path", path])
        err = capsys.readouterr().err
        assert message in err and "weights_only" not in err  # no advice to load it unsafely


def test_wandb_offline_run_writes_a_local_run_directory(workdir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), *SMALL, "--trainer.max_rounds", "1",
          "--trainer.logger", str(ROOT / "configs" / "loggers" / "wandb.yaml")])  # fmt: skip
    runs = list((workdir / "runs" / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
    shutil.rmtree(workdir / "runs")


def test_wandb_gets_an_absolute_folder(workdir):
    """W&B's service process resolves a relative ``dir`` against its own working directory (the process's
    at the first ``wandb.init``): a later run after a ``chdir`` lost its ``.wandb`` file."""
    logger = WandbLogger(save_dir="runs", offline=True)
    prepare_logger(logger)
    assert wandb_init_args(logger)["dir"] == str(workdir / "runs") and logger.save_dir == "runs"


def test_validate_test_and_predict_from_the_checkpoint_alone_write_into_its_run(workdir, capsys, caplog):
    main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), *SMALL])
    run = run_dir(workdir, "demo")
    config = (run / "config.yaml").read_text()
    ckpt = str(run / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    main(["validate", "--ckpt_path", ckpt])
    assert "val/dog/loss" in capsys.readouterr().out
    main(["test", "--ckpt_path", ckpt])
    assert "test/dog/loss" in capsys.readouterr().out
    main(["predict", "--ckpt_path", ckpt, "--data.predict_samples", "3"])
    assert [p.name for p in (workdir / "runs" / "demo").iterdir()] == [run.name]  # no new run folder
    samples = load_embeddings(run / "samples.safetensors")
    assert samples.audio.shape == (3 * len(samples.classes), 4, 768)
    assert samples.labels.bincount().tolist() == [3] * len(samples.classes)
    assert (run / "config.yaml").read_text() == config  # the fit's config is kept
    shutil.rmtree(run / "exports")
    main(["export", "--ckpt_path", ckpt])  # beside the checkpoint, in its run folder
    assert (run / "exports" / "dog.json").is_file()
    # rooster and church_bells arrive in round 3 of the demo: 2 rounds never train them
    assert "never trained (age 0, no class seen): ['church_bells', 'rooster']" in caplog.text


DEMO = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), *SMALL]


def visit_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as file:
        return [row for row in csv.DictReader(file) if row["client_seconds"]]


def test_resume_by_name_continues_the_newest_run_with_one_metrics_file(workdir, caplog):
    main([*DEMO, "--trainer.max_rounds", "1"])
    main([*DEMO, "--trainer.max_rounds", "2", "--ckpt_path", "last", "--model.init_args.lr", "0.5"])
    run = run_dir(workdir, "demo")  # one run folder
    assert "resuming run runs/demo/version_0 from last.ckpt" in caplog.text
    assert "resume: model.init_args.lr 0.001 -> 0.5 (checkpoint -> this run)" in caplog.text
    assert [int(r["step"]) for r in visit_rows(run)] == [0, 1, 2, 3, 4, 5]  # 3 clients x 2 rounds, each once
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert {g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]} == {0.5}
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["lr"] == 0.5
    main([*DEMO, "--trainer.max_rounds", "3", "--ckpt_path", str(run)])  # the explicit form: a run folder
    assert [int(r["step"]) for r in visit_rows(run)] == list(range(9))


def test_resume_without_a_run_or_against_the_checkpoint_is_one_clear_error(workdir, capsys):
    with pytest.raises(SystemExit) as err:
        main([*DEMO, "--ckpt_path", "last"])
    assert err.value.code == 2
    assert "a2vgen fit: error: --ckpt_path last: no run with checkpoints under runs/demo to resume" in (
        capsys.readouterr().err
    )
    main([*DEMO, "--trainer.max_rounds", "1"])
    with pytest.raises(SystemExit) as err:
        main([*DEMO, "--ckpt_path", "last", "--model", "a2vgen.modules.UnifiedGenerator",
              "--model.init_args.hidden_dim", "32"])  # fmt: skip
    assert err.value.code == 2
    (line, hint) = capsys.readouterr().err.strip().splitlines()[-2:]
    assert line.startswith("a2vgen fit: error: runs/demo/version_0/checkpoints/last.ckpt does not match this configur")
    assert "model: checkpoint a2vgen.modules.granularity.PerClassGenerator, this run a2vgen.modules.granularity." \
        "UnifiedGenerator; model.init_args.hidden_dim: checkpoint 16, this run 32" in line  # fmt: skip
    assert hint == "(run with --debug or A2VGEN_DEBUG=1 for the traceback)"


@pytest.mark.parametrize(("option", "instead"), [("max_epochs", "trainer.max_rounds and trainer.local_epochs"),
                                                 ("max_steps", "trainer.max_rounds, trainer.local_epochs")])  # fmt: skip
def test_epoch_and_step_limits_are_refused_naming_the_federated_option(workdir, capsys, option, instead):
    with pytest.raises(SystemExit) as err:
        main([*DEMO, f"--trainer.{option}", "1"])
    assert err.value.code == 2
    assert f"a2vgen fit: error: trainer.{option}=1 has no meaning in a federated fit: set {instead}" in (
        capsys.readouterr().err
    )
    assert not (workdir / "runs").exists()


def test_limit_train_batches_limits_each_visit_and_fast_dev_run_is_one_round_of_one_batch(workdir, caplog):
    main([*DEMO, "--trainer.limit_train_batches", "1"])
    ckpt = torch.load(run_dir(workdir, "demo") / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 3 * 2  # rounds x clients x local epochs, one batch each
    shutil.rmtree(workdir / "runs")
    caplog.clear()
    main([*DEMO, "--trainer.fast_dev_run", "true"])
    visits = re.findall(r"round (\d)/(\d) client \d", caplog.text)
    assert visits == [("1", "1")] * 3
    assert not (workdir / "runs").exists() and not (workdir / "exports").exists()  # a smoke test writes nothing


def test_no_sanity_check_or_model_summary_under_the_cli_and_optimizer_override_refused(workdir, capsys):
    cli = run_lightning(["--config", str(ROOT / "configs" / "demo.yaml")], run=False)
    assert cli.trainer.num_sanity_val_steps == 0
    assert not any(isinstance(c, ModelSummary) for c in cli.trainer.callbacks)
    with pytest.raises(SystemExit) as err:
        main([*DEMO, "--optimizer", "SGD"])
    assert err.value.code == 2
    assert "a2vgen fit: error: --optimizer is not supported: a2vgen builds one AdamW per generator bank" in (
        capsys.readouterr().err
    )


def test_checkpoint_preset_replaces_the_configs_own_and_takes_every_n_visits(workdir):
    cli = run_lightning(["--config", str(ROOT / "configs" / "demo.yaml"),
                         "--trainer.callbacks+=" + str(ROOT / "callbacks" / "checkpoint.yaml"),
                         "--trainer.callbacks.init_args.every_n_visits", "3"], run=False)  # fmt: skip
    (checkpoint,) = [c for c in cli.trainer.callbacks if isinstance(c, RoundCheckpoint)]
    assert (checkpoint.every_n_rounds, checkpoint.keep_last, checkpoint.every_n_visits) == (1, 2, 3)


def test_help_is_one_consistent_usage(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert out.count("usage:") == 1
    assert out.startswith(
        "usage: a2vgen [--debug] {fit,validate,test,predict,sample,export,embed,report,flower-app} ..."
    )


def test_user_errors_are_one_line_and_debug_shows_the_traceback(workdir, capsys, monkeypatch):
    for args in (["sample", "--ckpt_path", "missing.ckpt"], ["sample", "--ckpt_path", "x", "--num_samples", "0"]):
        with pytest.raises(SystemExit) as err:
            main(args)
        assert err.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt_path", "x", "--num_samples", "-2"])
    assert "a2vgen sample: error: --num_samples must be >= 1 (got -2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--debug", "sample", "--ckpt_path", "missing.ckpt"])
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("A2VGEN_DEBUG", "1")
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt_path", "missing.ckpt"])
    assert "Traceback" in capsys.readouterr().err


def test_a_run_failing_on_its_config_leaves_no_folder(workdir, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(ROOT / "configs" / "per_group.yaml"), *SMALL,
              "--data.clients", '[{id: "0", classes: [dog], group: machines}]'])  # fmt: skip
    assert err.value.code == 2
    assert "a2vgen fit: error: client '0' is pinned to group 'machines'" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


def test_off_a_terminal_the_log_has_one_line_per_visit_and_no_bar(workdir, capsys, caplog):
    main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), *SMALL[:-2]])  # progress bar on
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err and "client 0:" not in captured.out
    lines = re.findall(r"round \d/2 client \d \[[^]]+\]: loss \S+=.* \(\d+\.\d\ds\)", caplog.text)
    assert len(lines) == 6


def test_wandb_without_network_falls_back_to_offline_in_its_own_run_folder_and_resumes_its_id(
    workdir, monkeypatch, caplog
):
    wandb.finish()  # a run left open by an earlier test would be reused
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with socket.socket() as closed:  # a port on 127.0.0.1 that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    main([*DEMO, "--trainer.max_rounds", "1", "--trainer.logger", str(ROOT / "configs" / "loggers" / "wandb.yaml")])
    assert time.perf_counter() - start < 60  # blocked, W&B would wait ~100 s; a loaded 2-core machine needs > 15
    assert f"W&B server http://127.0.0.1:{port} unreachable" in caplog.text and "logging offline" in caplog.text
    (run,) = (workdir / "runs" / "a2vgen").iterdir()
    assert (run / "config.yaml").is_file() and list((run / "exports").glob("*.json"))
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (workdir / "runs" / "config.yaml").exists()
    assert list((workdir / "runs" / "wandb").glob(f"offline-run-*-{run.name}"))
    wandb.finish()
    main([*DEMO, "--ckpt_path", "last", "--trainer.logger", str(ROOT / "configs" / "loggers" / "wandb.yaml")])
    assert f"resuming run runs/a2vgen/{run.name} from last.ckpt" in caplog.text
    assert [p.name for p in (workdir / "runs" / "a2vgen").iterdir()] == [run.name]  # the same W&B run id
    wandb.finish()
