"""Generator quality: spread and structure learned, conditioning used, collapse caught by the evaluation."""

import logging

import pytest
import torch

from a2vgen.callbacks.evaluation import GeneratorEvaluation
from a2vgen.data.clients import ClientSpec
from a2vgen.data.datamodule import FederatedDataModule
from a2vgen.data.embeddings import SPLITS, EmbeddingSet
from a2vgen.data.sources import DemoEmbeddings, EmbeddingSource
from a2vgen.metrics.quality import evaluate_classes, reference_samplers, summarize
from a2vgen.modules import PerClassGenerator, UnifiedGenerator
from a2vgen.nn import ConditionalVAE
from conftest import small_demo
from federation_helpers import federated_fit

SHAPE = (4, 16)
TINY = {"hidden_dim": 64, "latent_dim": 8, "cond_width": 8}


class InMemory(EmbeddingSource):
    def __init__(self, data: EmbeddingSet) -> None:
        self.data = data

    def load(self) -> EmbeddingSet:
        return self.data


def embedding_set(audio: list[torch.Tensor], cond: torch.Tensor, held: int = 0) -> EmbeddingSet:
    """Classes ``c0, c1, ...`` from per-class audio ``[N, 4, 16]``; the last ``held`` of each are 'val'."""
    labels = torch.cat([torch.full((len(a),), i) for i, a in enumerate(audio)])
    split = torch.cat([torch.tensor([SPLITS["train"]] * (len(a) - held) + [SPLITS["val"]] * held) for a in audio])
    return EmbeddingSet(
        audio=torch.cat(audio), labels=labels, classes=[f"c{i}" for i in range(len(audio))], cond=[cond],
        split=split.to(torch.int8), origin="<test>",
    )  # fmt: skip


def train(cls, data: EmbeddingSet, epochs: int, batch_size: int = 64, **kwargs):
    dm = FederatedDataModule(
        clients=[ClientSpec("0", classes=data.classes)], source=InMemory(data), batch_size=batch_size
    )
    module = cls(
        classes=dm.classes, audio_shape=dm.audio_shape, cond_shapes=dm.cond_shapes, class_cond=dm.class_cond,
        audio_stats=dm.audio_stats, **{**TINY, **kwargs},
    )  # fmt: skip
    federated_fit(module, dm, max_rounds=1, local_epochs=epochs)
    return module.eval(), dm


def test_samples_recover_the_top_eigenvalues_of_low_rank_class_structure():
    g = torch.Generator().manual_seed(0)
    flat = SHAPE[0] * SHAPE[1]
    basis = torch.linalg.qr(torch.randn(flat, 3, generator=g)).Q  # orthonormal principal axes
    eigenvalues = torch.tensor([9.0, 4.0, 1.5])
    coeff = torch.randn(400, 3, generator=g) * eigenvalues.sqrt()
    x = 5.0 + coeff @ basis.T + 0.1 * torch.randn(400, flat, generator=g)
    module, _ = train(PerClassGenerator, embedding_set([x.view(-1, *SHAPE)], torch.randn(1, 6, 8, generator=g)), 60)
    samples = module.sample("c0", 4000, generator=torch.Generator().manual_seed(1)).flatten(1)
    top = torch.linalg.eigvalsh(torch.cov(samples.T.double())).flip(0)[:3]
    expected = eigenvalues.double() + 0.01
    assert torch.allclose(top, expected, rtol=0.3), (top, expected)


def test_unified_generator_separates_classes_whose_prompts_differ_in_one_token():
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(6, 8, generator=g) * 3
    cond = torch.stack([prompt, prompt.clone()])
    cond[1, 3] += 0.05 * torch.randn(8, generator=g)  # one token differs, by ~1 % of the prompt's scale
    means = torch.randn(2, *SHAPE, generator=g)
    audio = [m + 0.3 * torch.randn(200, *SHAPE, generator=g) for m in means]
    module, _ = train(UnifiedGenerator, embedding_set(audio, cond), 30)
    gen = torch.Generator().manual_seed(1)
    correct = 0
    for i, cls in enumerate(module.classes):
        samples = module.sample(cls, 100, generator=gen)
        nearest = torch.cdist(samples.flatten(1), means.flatten(1)).argmin(1)
        correct += int((nearest == i).sum())
    assert correct / 200 >= 0.9


def held_out_scores(module, dm) -> dict[str, float]:
    data = dm.data
    pick = lambda split, i: data.audio[data.split_indices(split)][data.labels[data.split_indices(split)] == i]  # noqa: E731
    train_sets = {c: pick("train", i) for i, c in enumerate(data.classes)}
    held = {c: pick("val", i) for i, c in enumerate(data.classes)}
    gen = torch.Generator().manual_seed(0)
    return summarize(evaluate_classes(train_sets, held, lambda c, n: module.sample(c, n, generator=gen), 64))


def test_original_objective_collapses_where_the_default_keeps_the_spread():
    source = small_demo(train_per_class=24)
    source.val_per_class = 16
    data = source.load()
    classes = data.classes[:3]
    subset = EmbeddingSet(
        audio=data.audio[data.labels < 3], labels=data.labels[data.labels < 3], classes=classes,
        cond=[data.cond[0][:3]], split=data.split[data.labels < 3], origin="<demo subset>",
    )  # fmt: skip
    original = held_out_scores(*train(PerClassGenerator, subset, 60, objective="original"))
    default = held_out_scores(*train(PerClassGenerator, subset, 60))
    assert original["diversity_ratio"] < 0.3 and original["recall"] < 0.2, original
    assert default["diversity_ratio"] > max(0.45, 3 * original["diversity_ratio"]), default
    assert default["recall"] > 0.3 and default["fd_ratio"] < original["fd_ratio"], default


class CentroidVAE(ConditionalVAE):
    """Samples are the class's training mean: what a collapsed generator converges to."""

    @torch.no_grad()
    def sample(self, n, cond=None, generator=None, cond_index=None):
        return self.audio_norm.mean.expand(n, *self.audio_shape).clone()


class CentroidGenerator(PerClassGenerator):
    def build_network(self, key):
        return CentroidVAE(self.audio_shape, self.cond_shapes, **TINY)


def test_the_evaluation_flags_a_generator_that_returns_the_class_centroid(tmp_path, caplog):
    source = small_demo(train_per_class=24)
    source.val_per_class = 8
    dm = FederatedDataModule(clients=[ClientSpec("0", classes=["dog", "rain"])], source=source, batch_size=64)
    module = CentroidGenerator(
        classes=dm.classes, audio_shape=dm.audio_shape, cond_shapes=dm.cond_shapes, class_cond=dm.class_cond,
        audio_stats=dm.audio_stats, **TINY,
    )  # fmt: skip
    evaluation = GeneratorEvaluation(num_samples=32, dirpath=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="a2vgen"):
        federated_fit(module, dm, callbacks=[evaluation], max_rounds=1)
    scores = evaluation.records[-1]["per_class"]["dog"]
    assert scores["diversity_ratio"] == 0 and scores["recall"] == 0
    assert scores["fd_ratio"] == pytest.approx(scores["centroid_fd_ratio"], rel=1e-6)  # it *is* the centroid
    assert "collapse" in caplog.text and "'dog'" in caplog.text


def test_references_bracket_the_scores():
    """The Gaussian reference scores near real data; the centroid fails every spread score."""
    data = DemoEmbeddings(
        num_classes=2,
        train_per_class=48,
        val_per_class=16,
        test_per_class=4,
        tokens=4,
        audio_dim=64,
        cond_tokens=6,
        cond_dim=8,
    ).load()
    train_idx, val_idx = data.split_indices("train"), data.split_indices("val")
    x = data.audio[train_idx][data.labels[train_idx] == 0].double().mean(1)
    held = data.audio[val_idx][data.labels[val_idx] == 0].double().mean(1)
    refs = reference_samplers(x)
    scores = {
        name: evaluate_classes({"c": x}, {"c": held}, lambda c, n, s=s: s(n), 64)["c"] for name, s in refs.items()
    }
    assert scores["centroid"]["diversity_ratio"] == 0 and scores["centroid"]["recall"] == 0
    assert scores["gaussian"]["fd_ratio"] < 0.5 * scores["centroid"]["fd_ratio"]
    assert scores["resampled"]["memorization_ratio"] == 0  # copies of training clips
    assert scores["gaussian"]["memorization_ratio"] > 0.8
