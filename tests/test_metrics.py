"""Metrics for synthetic vs real embeddings, checked against direct numpy/scipy computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import pdist

from a2vgen.metrics import (
    CentroidCosine,
    DiversityRatio,
    PerClassKID,
    PerClassPRDC,
    PooledFrechetDistance,
    SyntheticClassAccuracy,
    evaluate_generators,
    forgetting,
)
from a2vgen.metrics import functional as MF

CLASSES = ["dog", "rooster", "rain"]


def class_samples(label: int, n: int, seed: int, dim: int = 64, shift: float = 0.0) -> torch.Tensor:
    """Class ``label``: a fixed mean, rank-3 structured variation and a little isotropic noise."""
    fixed = torch.Generator().manual_seed(1000 + label)
    mean, basis = torch.randn(dim, generator=fixed), torch.randn(dim, 3, generator=fixed)
    g = torch.Generator().manual_seed(seed)
    return mean + shift + torch.randn(n, 3, generator=g) @ basis.T + 0.3 * torch.randn(n, dim, generator=g)


def two_sets(n_real: int = 20, n_fake: int = 30, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n_real, dim, generator=g), 0.8 * torch.randn(n_fake, dim, generator=g) + 0.3


def kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    def k(a, b):
        return (a @ b / x.shape[1] + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def prdc_reference(x: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    """Loops over points; k-NN radii exclude the point itself, with k clipped to n - 1 per set."""
    kx, ky = min(k, len(x) - 1), min(k, len(y) - 1)

    def radii(a, k):
        return np.array([np.sort(np.linalg.norm(a - p, axis=1))[k] for p in a])

    rx, ry = radii(x, kx), radii(y, ky)
    return {
        "precision": np.mean([any(np.linalg.norm(q - x[i]) <= rx[i] for i in range(len(x))) for q in y]),
        "recall": np.mean([any(np.linalg.norm(p - y[j]) <= ry[j] for j in range(len(y))) for p in x]),
        "density": np.mean([sum(np.linalg.norm(q - x[i]) <= rx[i] for i in range(len(x))) for q in y]) / kx,
        "coverage": np.mean([min(np.linalg.norm(x[i] - q) for q in y) <= rx[i] for i in range(len(x))]),
    }


def frechet_reference(x: np.ndarray, y: np.ndarray) -> float:
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(cx @ cy).real
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(cx + cy - 2 * covmean))


def per_class_update(metric, sets: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Feed interleaved classes in two batches with per-sample labels."""
    for half in (0, 1):
        real = torch.cat([r[half::2] for r, _ in sets.values()])
        fake = torch.cat([f[half::2] for _, f in sets.values()])
        real_labels = torch.cat([torch.full((len(r[half::2]),), c) for c, (r, _) in sets.items()])
        fake_labels = torch.cat([torch.full((len(f[half::2]),), c) for c, (_, f) in sets.items()])
        metric.update(real=real, fake=fake, real_labels=real_labels, fake_labels=fake_labels)


def reference_sets() -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    x, y = two_sets()
    return {0: (x, y), 2: (x[:12] * 2, y[:9] - 1)}


def test_kid_matches_direct_sum() -> None:
    sets = reference_sets()
    metric = PerClassKID(CLASSES)
    per_class_update(metric, sets)
    out = metric.compute()
    expected = {CLASSES[c]: kid_reference(r.double().numpy(), f.double().numpy()) for c, (r, f) in sets.items()}
    for name, value in expected.items():
        assert out[f"kid/{name}"].item() == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert out["kid"].item() == pytest.approx(np.mean(list(expected.values())))
    assert set(out) == {"kid", "kid/dog", "kid/rain"}


def test_kid_subsets_of_full_size_equal_full_kid() -> None:
    real, fake = two_sets(n_real=20, n_fake=20)
    full, subsets = PerClassKID(), PerClassKID(subsets=3, subset_size=50)
    for metric in (full, subsets):
        metric.update(real=real, fake=fake)
    assert subsets.compute()["kid"].item() == pytest.approx(full.compute()["kid"].item(), rel=1e-9)
    small = PerClassKID(subsets=5, subset_size=8)
    small.update(real=real, fake=fake)
    assert small.compute()["kid"].item() != pytest.approx(full.compute()["kid"].item(), rel=1e-3)


@pytest.mark.parametrize("k", [1, 3, 5, 50])
def test_prdc_matches_brute_force(k: int) -> None:
    sets = reference_sets()
    metric = PerClassPRDC(CLASSES, k=k)
    per_class_update(metric, sets)
    out = metric.compute()
    for c, (real, fake) in sets.items():
        expected = prdc_reference(real.double().numpy(), fake.double().numpy(), k)
        for name, value in expected.items():
            assert out[f"{name}/{CLASSES[c]}"].item() == pytest.approx(value), name


def test_centroid_cosine_and_diversity_match_numpy() -> None:
    sets = reference_sets()
    cosine, diversity = CentroidCosine(CLASSES), DiversityRatio(CLASSES)
    for metric in (cosine, diversity):
        per_class_update(metric, sets)
    cos_out, div_out = cosine.compute(), diversity.compute()
    for c, (real, fake) in sets.items():
        x, y = real.double().numpy(), fake.double().numpy()
        centroid = x.mean(0)
        cos = (y @ centroid) / (np.linalg.norm(y, axis=1) * np.linalg.norm(centroid))
        assert cos_out[f"centroid_cosine/{CLASSES[c]}"].item() == pytest.approx(cos.mean())
        ratio = pdist(y).mean() / pdist(x).mean()
        assert div_out[f"diversity_ratio/{CLASSES[c]}"].item() == pytest.approx(ratio)


@pytest.mark.parametrize(("n", "dim"), [(200, 16), (40, 24)])
def test_frechet_distance_matches_scipy(n: int, dim: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, dim, generator=g) @ torch.randn(dim, dim, generator=g)
    y = torch.randn(n + 7, dim, generator=g) * 1.5 + 0.5
    expected = frechet_reference(x.double().numpy(), y.double().numpy())
    assert MF.frechet_distance(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_pooled_frechet_splits_each_class_and_projects_on_pca() -> None:
    real = {c: class_samples(c, 16, seed=c) for c in range(3)}
    fake = {c: class_samples(c, 5, seed=10 + c) for c in range(3)}
    metric = PooledFrechetDistance(pca_dim=None, seed=3)
    per_class_update(metric, {c: (real[c], fake[c]) for c in range(3)})
    # Reproduce the documented split: per class, B = first half of a seeded permutation, A = the rest.
    gen = torch.Generator().manual_seed(3)
    a, b, f = [], [], []
    for c in range(3):
        r = torch.cat([real[c][0::2], real[c][1::2]])  # the order the metric stored them in
        s = torch.cat([fake[c][0::2], fake[c][1::2]])
        perm = torch.randperm(16, generator=gen)
        a.append(r[perm[8:]])
        b.append(r[perm[:5]])
        f.append(s[torch.randperm(5, generator=gen)[:5]])
    a, b, f = (torch.cat(t).double().numpy() for t in (a, b, f))
    out = metric.compute()
    assert out["frechet"].item() == pytest.approx(frechet_reference(a, f), rel=1e-6)
    assert out["frechet_baseline"].item() == pytest.approx(frechet_reference(a, b), rel=1e-6)
    pca = PooledFrechetDistance(pca_dim=4, seed=3)
    per_class_update(pca, {c: (real[c], fake[c]) for c in range(3)})
    union = np.concatenate([a, b, f])
    _, _, vh = np.linalg.svd(union - union.mean(0), full_matrices=False)
    expected = frechet_reference(a @ vh[:4].T, f @ vh[:4].T)  # a translation does not change FD
    assert pca.compute()["frechet"].item() == pytest.approx(expected, rel=1e-6)


def scores(real: dict[int, torch.Tensor], fake: dict[int, torch.Tensor], train=None) -> dict[str, float]:
    return evaluate_generators(
        {CLASSES[c]: r for c, r in real.items()},
        lambda name, n: fake[CLASSES.index(name)][:n],
        num_samples=64,
        train=None if train is None else {CLASSES[c]: t for c, t in train.items()},
        pca_dim=8,
    )


@pytest.fixture(scope="module")
def real_sets() -> dict[str, dict[int, torch.Tensor]]:
    return {
        "held": {c: class_samples(c, 32, seed=c) for c in range(3)},
        "train": {c: class_samples(c, 48, seed=20 + c) for c in range(3)},
        "same": {c: class_samples(c, 64, seed=40 + c) for c in range(3)},
        "shifted": {c: class_samples(c, 64, seed=40 + c, shift=2.0) for c in range(3)},
    }


def test_identical_distribution_scores_baseline_and_shift_scores_worse(real_sets) -> None:
    held = real_sets["held"]
    good, bad = scores(held, real_sets["same"]), scores(held, real_sets["shifted"])
    assert abs(good["kid"]) < 10 < bad["kid"]
    assert good["precision"] > 0.85 and good["recall"] > 0.85 and good["coverage"] > 0.9
    assert 0.7 < good["density"] < 1.3
    assert 0.85 < good["diversity_ratio"] < 1.15
    assert good["frechet"] < 1.5 * good["frechet_baseline"]
    assert bad["frechet"] > 3 * bad["frechet_baseline"]
    for name in ("precision", "recall", "density", "coverage", "centroid_cosine"):
        assert bad[name] < good[name] - 0.1, name
    for c in range(3):
        assert bad[f"kid/{CLASSES[c]}"] > good[f"kid/{CLASSES[c]}"]


def test_collapsed_generator_fails_diversity_recall_coverage(real_sets) -> None:
    held, train = real_sets["held"], real_sets["train"]
    collapsed = {c: held[c].mean(0).expand(64, -1) for c in held}
    good, bad = scores(held, real_sets["same"], train), scores(held, collapsed, train)
    assert bad["centroid_cosine"] == pytest.approx(1.0) and bad["centroid_cosine"] > good["centroid_cosine"]
    assert bad["synthetic_accuracy"] == 1.0 and bad["real_accuracy"] > 0.95
    assert bad["diversity_ratio"] < 0.01 < 0.85 < good["diversity_ratio"]
    assert bad["recall"] < 0.05 and bad["coverage"] < 0.5
    assert good["recall"] > 0.85 and good["coverage"] > 0.9
    assert bad["kid"] > 10 and bad["frechet"] > 3 * bad["frechet_baseline"]


def probe_data(shuffle: bool) -> SyntheticClassAccuracy:
    g = torch.Generator().manual_seed(7)
    means = 4 * torch.randn(4, 32, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(4).repeat_interleave(n)
        return means[labels] + torch.randn(len(labels), 32, generator=g), labels

    train, train_labels = draw(40)
    if shuffle:
        train_labels = train_labels[torch.randperm(len(train_labels), generator=g)]
    metric = SyntheticClassAccuracy(["a", "b", "c", "d"])
    real, real_labels = draw(16)
    fake, fake_labels = draw(64)
    metric.update(train=train, train_labels=train_labels)
    metric.update(real=real, fake=fake, real_labels=real_labels, fake_labels=fake_labels)
    return metric


def test_probe_separates_toy_classes_and_is_chance_with_shuffled_labels() -> None:
    out = probe_data(shuffle=False).compute()
    assert out["synthetic_accuracy"] > 0.95 and out["real_accuracy"] > 0.95
    assert {f"synthetic_accuracy/{c}" for c in "abcd"} <= set(out)
    shuffled = probe_data(shuffle=True).compute()
    assert abs(shuffled["synthetic_accuracy"].item() - 0.25) < 0.12
    assert abs(shuffled["real_accuracy"].item() - 0.25) < 0.2


def test_probe_is_deterministic_and_works_in_inference_mode() -> None:
    first = probe_data(shuffle=True).compute()
    with torch.inference_mode():
        second = probe_data(shuffle=True).compute()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_merged_states_equal_one_metric_over_all_data() -> None:
    """States reduce by concatenation, as a distributed sync does."""
    sets = reference_sets()
    whole, part_a, part_b = (PerClassPRDC(CLASSES, k=3) for _ in range(3))
    per_class_update(whole, sets)
    for c, (real, fake) in sets.items():
        part_a.update(real=real[:5], fake=fake[:4], real_labels=c, fake_labels=CLASSES[c])
        part_b.update(real=real[5:], fake=fake[4:], real_labels=c, fake_labels=CLASSES[c])
    part_a.merge_state(part_b)
    merged, expected = part_a.compute(), whole.compute()
    assert merged.keys() == expected.keys()
    assert all(merged[k].item() == pytest.approx(expected[k].item()) for k in expected)


def test_labels_are_checked() -> None:
    metric = PerClassKID(CLASSES)
    with pytest.raises(ValueError, match="available"):
        metric.update(real=torch.randn(4, 3), real_labels="cat")
    with pytest.raises(ValueError, match="labels are required"):
        metric.update(real=torch.randn(4, 3))
    with pytest.raises(ValueError, match="not indices"):
        metric.update(real=torch.randn(2, 3), real_labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected 4 labels"):
        metric.update(real=torch.randn(4, 3), real_labels=[0, 1])
    metric.update(real=torch.randn(4, 3), fake=torch.randn(4, 5), real_labels=0, fake_labels=0)
    with pytest.raises(ValueError, match="dims"):
        metric.compute()


def test_evaluate_generators_flattens_tokens_and_is_json_ready() -> None:
    real = {name: class_samples(c, 12, seed=c, dim=24).view(12, 4, 6) for c, name in enumerate(CLASSES)}
    train = {name: class_samples(c, 20, seed=9 + c, dim=24).view(20, 4, 6) for c, name in enumerate(CLASSES)}
    calls = []

    def sample(name: str, n: int) -> torch.Tensor:
        calls.append((name, n, torch.is_grad_enabled()))
        return class_samples(CLASSES.index(name), n, seed=50, dim=24).view(n, 4, 6)

    out = evaluate_generators(real, sample, train=train)
    assert calls == [(name, 12, False) for name in CLASSES]
    for metric in ("kid", "precision", "recall", "density", "coverage", "centroid_cosine", "diversity_ratio"):
        assert {f"{metric}/{name}" for name in CLASSES} | {metric} <= set(out)
    assert {"frechet", "frechet_baseline", "synthetic_accuracy/rain", "real_accuracy"} <= set(out)
    assert all(isinstance(v, float) and math.isfinite(v) for v in json.loads(json.dumps(out)).values())


def test_forgetting_is_drop_from_best() -> None:
    history = {"dog": [(3, 0.5), (1, 0.9), (2, 0.7)], "rooster": [(1, 0.2), (2, 0.6)], "rain": []}
    drops = forgetting(history)
    assert drops == pytest.approx({"dog": 0.4, "rooster": 0.0})
    kid_history = {"dog": [(1, 0.1), (2, 0.05), (3, 0.3)]}
    assert forgetting(kid_history, higher_is_better=False) == pytest.approx({"dog": 0.25})
