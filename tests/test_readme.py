"""The README's "Write your own generator" code, run exactly as written."""

import re
import sys
from pathlib import Path

import torch

from a2vgen.data.clients import ClientSpec
from a2vgen.data.sources import DemoEmbeddings
from a2vgen.export import export_bank, load_exported
from a2vgen.nn import GENERATORS
from conftest import module_for, small_datamodule

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code() -> list[str]:
    text = README.read_text()
    section = text.split("## Write your own generator\n")[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_gaussian_example_fits_exports_loads_and_samples(tmp_path, monkeypatch):
    module_code, usage, _ = section_code()
    (tmp_path / "my_generators.py").write_text(module_code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_generators", raising=False)  # another test's my_generators
    scope: dict = {}
    try:
        exec(compile(usage, "README.md", "exec"), scope)
    finally:
        sys.modules.pop("my_generators", None)
    audio, meta, model = scope["audio"], scope["meta"], scope["model"]
    assert audio.shape == (8, 4, 768) and bool(torch.isfinite(audio).all())
    assert meta["network"]["type"] == "ConditionalGaussian" and meta["classes"] == ["dog"]
    assert GENERATORS.get("ConditionalGaussian") is type(scope["net"])
    stats = scope["trainer"].fit_loop.current_visit.stats["dog"]
    assert set(stats) == {"loss", "mse", "std", "samples"}
    # it learned: the predicted mean moved towards the class mean (by a quarter of the untrained distance or more)
    data = DemoEmbeddings(num_classes=2, train_per_class=32).load()
    dog = data.audio[data.labels == 0].mean(0).flatten()
    net = scope["net"]
    trained, untrained = net(meta["cond"]["dog"])[0], type(net)(**net.config)(meta["cond"]["dog"])[0]
    assert (trained - dog).norm() < 0.75 * (untrained - dog).norm()
    assert model.seen_classes("dog") == ["dog"]


def test_deep_generator_example_exports_and_loads(tmp_path):
    scope: dict = {}
    exec(compile(section_code()[2], "README.md", "exec"), scope)
    module = module_for(scope["DeepGenerator"], small_datamodule([ClientSpec("0", classes=["dog"])]))
    export_bank(module, module.bank, tmp_path)
    net, _ = load_exported(tmp_path / "dog")
    assert (net.config["hidden_dim"], net.config["latent_dim"]) == (2048, 512)
    for p, q in zip(module.bank["dog"].net.state_dict().values(), net.state_dict().values()):
        assert torch.equal(p, q)
