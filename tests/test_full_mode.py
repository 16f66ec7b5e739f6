"""Full mode: the adapter trains beside the generators and previews render through a real pipeline."""

import pytest
import torch
from PIL import Image

from a2vgen.callbacks import DiffusionPreviews
from a2vgen.callbacks.previews import preview_seed
from a2vgen.data.clients import ClientSpec
from a2vgen.data.embeddings import EmbeddingSet, save_embeddings
from a2vgen.data.sources import DemoEmbeddings, EmbeddingFile
from a2vgen.modules import PerClassGenerator
from a2vgen.modules.base import ADAPTER_KEY
from conftest import module_for, small_datamodule
from federation_helpers import Recorder, federated_fit
from tiny_models import build_tiny_flux, build_tiny_sd

CLIENTS = [ClientSpec("0", classes=["dog", "rain"]), ClientSpec("1", classes=["dog", "rooster"])]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return str(build_tiny_sd(tmp_path_factory.mktemp("sd") / "sd"))


def sd_data():
    """Demo embeddings in the tiny SD pipeline's prompt space: CLIP states [77, 32]."""
    return DemoEmbeddings(num_classes=4, train_per_class=16, val_per_class=2, test_per_class=2,
                          audio_dim=16, cond_tokens=77, cond_dim=32)  # fmt: skip


class PipelineSpy:
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer, module):
        pipeline = trainer.server.pipeline()
        original = type(pipeline).__call__

        def spy(pipe, *args, **kwargs):
            self.calls.append({k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)})
            return original(pipe, *args, **kwargs)

        type(pipeline).__call__ = spy
        self.restore = lambda: setattr(type(pipeline), "__call__", original)


def test_full_mode_renders_previews_from_adapter_outputs(tmp_path, tiny_sd):
    dm = small_datamodule(CLIENTS, source=sd_data())
    module = module_for(PerClassGenerator, dm, train_adapter=True)
    previews = DiffusionPreviews(samples_per_class=2, height=64, width=64, num_inference_steps=2, dirpath=str(tmp_path))
    spy, recorder = PipelineSpy(), Recorder()
    from lightning.pytorch import Callback

    spy_cb = type("Spy", (Callback,), {"on_fit_start": spy.on_fit_start})()
    try:
        federated_fit(module, dm, callbacks=[spy_cb, recorder, previews], max_rounds=3, local_epochs=3,
                      generator_only=False, pipeline=tiny_sd)  # fmt: skip
    finally:
        spy.restore()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    classes = module.classes[:4]
    assert files == sorted(f"round-{r:04d}/{c}.png" for r in (1, 2, 3) for c in classes)
    assert Image.open(tmp_path / f"round-0003/{classes[0]}.png").size == (2 * 64, 2 * 64)
    # the pipeline received the adapter's outputs on generator samples, then the reference text embedding
    assert len(spy.calls) == 3 * len(classes) * 2
    call = spy.calls[-2]
    name = classes[-1]
    audio = module.sample(name, 2, generator=torch.Generator().manual_seed(preview_seed(0, 3, name)))
    with torch.no_grad():
        expected = module.adapt(audio)[0]
    torch.testing.assert_close(call["prompt_embeds"], expected)
    reference = module.class_condition(name)[0].expand(2, -1, -1)
    assert not torch.allclose(call["prompt_embeds"], reference)
    torch.testing.assert_close(spy.calls[-1]["prompt_embeds"], reference)
    # the adapter learns: its loss falls over rounds
    losses = [e["stats"][ADAPTER_KEY]["loss"] for e in recorder.ends]
    assert losses[-1] < 0.8 * losses[0]


def test_adapter_follows_the_flux_prompt_space(tmp_path):
    flux = build_tiny_flux(tmp_path / "flux")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(12)
    data = EmbeddingSet(
        audio=torch.randn(24, 4, 16, generator=g) + labels[:, None, None],
        labels=labels,
        classes=["dog", "rain"],
        cond=[torch.randn(2, 8, 32, generator=g), torch.randn(2, 32, generator=g)],
    )
    save_embeddings(tmp_path / "flux.safetensors", data)
    dm = small_datamodule(
        [ClientSpec("0", classes=["dog", "rain"])], source=EmbeddingFile(str(tmp_path / "flux.safetensors"))
    )
    module = module_for(PerClassGenerator, dm, train_adapter=True)
    assert [list(t.shape[1:]) for t in module.adapt(torch.randn(3, 4, 16))] == [[8, 32], [32]]
    previews = DiffusionPreviews(samples_per_class=1, height=32, width=32, num_inference_steps=2,
                                 reference_row=False, dirpath=str(tmp_path / "p"))  # fmt: skip
    federated_fit(module, dm, callbacks=[previews], max_rounds=1, generator_only=False, pipeline=str(flux))
    assert Image.open(tmp_path / "p" / "round-0001" / "dog.png").size == (32, 32)


def test_independent_adapters_are_averaged_over_the_round(tmp_path, tiny_sd):
    dm = small_datamodule(CLIENTS, source=sd_data())
    module = module_for(PerClassGenerator, dm, train_adapter=True)
    recorder = Recorder()
    trainer = federated_fit(module, dm, callbacks=[recorder], max_rounds=1, shared_generators=False,
                            aggregation="fedavg", generator_only=False, pipeline=tiny_sd)  # fmt: skip
    banks = trainer.fit_loop.generators.client_banks
    n0, n1 = (e["stats"][ADAPTER_KEY]["samples"] for e in recorder.ends)
    a0, a1 = (e["adapter"] for e in recorder.ends)  # each client's adapter after its visit
    expected = [(n0 * x.double() + n1 * y.double()) / (n0 + n1) for x, y in zip(a0, a1)]
    assert not torch.equal(a0[0], a1[0])
    for adapter in [bank.adapter for bank in banks.values()] + [module.bank.adapter]:
        for p, e in zip(adapter.parameters(), expected):
            torch.testing.assert_close(p.double(), e, rtol=1e-6, atol=1e-7)
