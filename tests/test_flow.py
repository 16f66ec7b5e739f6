"""The flow-matching generator type, built through the public hooks only: every granularity and sharing
mode, reset, FedAvg, export/load and sampling work for it unchanged."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from a2vgen.callbacks import ClassChangeResetCallback
from a2vgen.data.clients import ClientSpec
from a2vgen.export import export_bank, load_exported
from a2vgen.modules import FlowPerClassGenerator, FlowPerGroupGenerator, FlowUnifiedGenerator
from a2vgen.nn import ConditionalFlow
from conftest import make_batch, module_for, small_datamodule, small_module
from federation_helpers import Recorder, all_equal, federated_fit, weights

CLIENTS = [ClientSpec("0", schedule={1: ["dog"], 3: ["dog", "rooster"]}), ClientSpec("1", classes=["dog"])]
GRANULARITIES = [
    (FlowPerClassGenerator, {}, ["rooster"]),
    (FlowPerGroupGenerator, {"class_groups": {"mammals": ["dog"], "birds": ["rooster"]}}, ["birds"]),
    (FlowUnifiedGenerator, {}, ["unified"]),
]


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "independent-fedavg"])
@pytest.mark.parametrize(("cls", "kwargs", "round3_keys"), GRANULARITIES, ids=["per_class", "per_group", "unified"])
def test_flow_generators_federate_reset_export_and_sample(cls, kwargs, round3_keys, shared, tmp_path):
    dm = small_datamodule(CLIENTS)
    module = module_for(cls, dm, **kwargs)
    reset = ClassChangeResetCallback()
    recorder = Recorder(keys=module.generator_keys)
    options = {"shared_generators": shared, "aggregation": "none" if shared else "fedavg"}
    trainer = federated_fit(module, dm, callbacks=[reset, recorder], max_rounds=3, **options)
    client0 = [(e["round"], e["classes"], e["keys"]) for e in reset.events if e["client"] == "0"]
    assert client0 == [(1, ["dog"], [module.generator_key("dog")]), (3, ["rooster"], round3_keys)]
    assert set(recorder.ends[0]["stats"][module.generator_key("dog")]) == {"loss", "x1_mse", "samples"}

    # the reset keys start round 3 as freshly built ones; in shared mode the others carry on untouched
    i = next(i for i, s in enumerate(recorder.starts) if (s["client"], s["round"]) == ("0", 3))
    fresh = module_for(cls, dm, **kwargs)
    for key in module.generator_keys:
        if key in round3_keys:
            assert all_equal(recorder.starts[i]["weights"][key], weights(fresh, key))
        elif shared:
            assert all_equal(recorder.starts[i]["weights"][key], recorder.ends[i - 1]["weights"][key])
    if not shared:  # FedAvg: every holder of a key continues from the server's average
        for bank in trainer.fit_loop.generators.client_banks.values():
            for key in bank.keys:
                assert all_equal(weights_of(bank, key), weights(module, key))

    export_bank(module, module.bank, tmp_path)
    for name in ("dog", "rooster"):
        net, meta = load_exported(tmp_path / module.generator_key(name))
        assert isinstance(net, ConditionalFlow)
        cond = module.class_condition(name)
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        samples = module.sample(name, 5, generator=g1)
        assert samples.shape == (5, 4, 16) and bool(torch.isfinite(samples).all())
        torch.testing.assert_close(net.sample(5, cond, generator=g2), samples)


def weights_of(bank, key):
    return [p.detach().clone() for p in bank[key].parameters()]


class SeedEachBatch(Callback):
    """Same flow noise (x0, t) for the same batch position, whatever ran before."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        torch.manual_seed(batch_idx)


class ResetAtEpoch(Callback):
    def __init__(self, epoch, keys):
        self.epoch, self.keys = epoch, keys

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            module.reset_generators(self.keys)


def fit(module, batches, epochs, callbacks=()):
    trainer = Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SeedEachBatch(), *callbacks],
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


def test_flow_reset_trains_like_a_fresh_generator_with_a_fresh_optimizer():
    classes = ["dog", "rooster"]
    batches = [make_batch([0, 0, 0], seed=1), make_batch([1, 1], seed=2)] * 2
    reset = small_module(FlowPerClassGenerator, classes)
    t_reset = fit(reset, batches, epochs=3, callbacks=[ResetAtEpoch(2, ["rooster"])])
    plain = small_module(FlowPerClassGenerator, classes)
    fit(plain, batches, epochs=3)
    fresh = small_module(FlowPerClassGenerator, classes)
    t_fresh = fit(fresh, batches, epochs=1)
    for p, q in zip(reset.bank["rooster"].parameters(), fresh.bank["rooster"].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    for p, q in zip(reset.bank["rooster"].parameters(), plain.bank["rooster"].parameters()):
        assert not torch.equal(p, q)
    opt_reset, opt_fresh = t_reset.optimizers[0], t_fresh.optimizers[0]
    for p, q in zip(reset.bank["rooster"].parameters(), fresh.bank["rooster"].parameters()):
        assert float(opt_reset.state[p]["step"]) == float(opt_fresh.state[q]["step"]) == 2
        torch.testing.assert_close(opt_reset.state[p]["exp_avg_sq"], opt_fresh.state[q]["exp_avg_sq"])
    for p, q in zip(reset.bank["dog"].parameters(), plain.bank["dog"].parameters()):
        assert torch.equal(p, q)


def test_flow_network_contract():
    net = ConditionalFlow([4, 16], [[6, 8]], hidden_dim=32, num_blocks=2, cond_width=8, steps=4, solver="euler")
    assert type(net)(**net.config).state_dict().keys() == net.state_dict().keys()
    cond = [torch.randn(3, 6, 8)]
    one = net.sample(5, [cond[0][:1]], generator=torch.Generator().manual_seed(0))
    picked = net.sample(
        5, cond, generator=torch.Generator().manual_seed(0), cond_index=torch.zeros(5, dtype=torch.long)
    )
    torch.testing.assert_close(one, picked)
    parts = net.loss(torch.randn(3, 4, 16), cond)
    assert set(parts) == {"loss", "x1_mse"} and parts["loss"].shape == (3,)
    unconditioned = ConditionalFlow([4, 16], [], hidden_dim=16, steps=2)
    assert unconditioned.sample(2).shape == (2, 4, 16)
    with pytest.raises(ValueError, match="solver must be 'euler' or 'heun'"):
        ConditionalFlow([4, 16], [], solver="rk4")


def test_flow_config_through_the_cli_sample_prompt_and_report(tmp_path, monkeypatch):
    from pathlib import Path

    from a2vgen.cli import main
    from a2vgen.data.embeddings import load_embeddings
    from tiny_models import build_tiny_sd

    pipeline = str(build_tiny_sd(tmp_path / "sd"))  # CLIP states [77, 32]
    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "flow.yaml")
    main(["fit", "--config", config, "--trainer.max_rounds", "2", "--data.source.init_args.train_per_class", "6",
          "--data.source.init_args.cond_dim", "32", "--data.source.init_args.audio_dim", "16",
          "--model.init_args.hidden_dim", "16",
          "--model.init_args.sample_steps", "4", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    (run,) = (tmp_path / "runs" / "flow").glob("version_*")
    ckpt = str(run / "checkpoints" / "last.ckpt")
    main(["sample", "--ckpt_path", ckpt, "--classes", "[dog]", "--num_samples", "3", "--out", "s.safetensors"])
    assert load_embeddings("s.safetensors").audio.shape == (3, 4, 16)
    main(["sample", "--ckpt_path", ckpt, "--prompt", "a photo of a cat", "--pipeline", pipeline,
          "--classes", "[dog]", "--num_samples", "2", "--out", "cat.safetensors"])  # fmt: skip
    assert load_embeddings("cat.safetensors").audio.shape == (2, 4, 16)
    main(["report", str(run)])
    page = (run / "report" / "report.html").read_text()
    assert "x1_mse" in page and (run / "report" / "loss_parts.png").is_file()
    net, meta = load_exported(run / "exports" / "dog")
    assert isinstance(net, ConditionalFlow) and meta["network"]["config"]["steps"] == 4
