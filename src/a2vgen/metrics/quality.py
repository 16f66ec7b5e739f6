"""Per-class quality scores that a collapsed or copying generator cannot pass, with their references.

For one class, ``train`` are the real clips the generator learned from, ``held`` real clips it never saw
and ``fake`` its samples (features ``[N, F]``; see :func:`features`). Every score is a ratio against
real data, so 1 is "as good as a fresh draw of real clips":

- ``fd_ratio``: Fréchet distance of ``fake`` to ``held`` over that of ``train`` to ``held``, both at the
  same ``n`` (``|held|``, and at most ``|train|``), averaged over repeated subsamples, after projecting
  on the top ``pca_dim`` principal axes of the class's real clips (n tens of samples cannot fill a
  covariance of hundreds of dimensions).
- ``diversity_ratio``: mean pairwise distance within ``fake`` over that within ``held`` (collapse → 0).
- ``recall``: share of ``held`` clips inside the ``k``-NN ball of some synthetic sample, ``fake``
  subsampled to ``|held|`` so that radii compare (collapse → 0).
- ``memorization_ratio``: median distance from a synthetic sample to its nearest training clip over the
  same for held-out clips (copies of training clips → 0; ≥ 0.9 means no closer than new real data).

:func:`reference_samplers` gives the scores' references: the class centroid (collapse floor), a Gaussian
with the training clips' mean and low-rank-plus-diagonal covariance (a strong simple baseline), and
training clips resampled (the ceiling for fidelity, the floor for memorization).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from a2vgen.metrics import functional as MF
from a2vgen.metrics.probe import LinearProbe, fit_linear_probe

COLLAPSE_DIVERSITY = 0.3
MIN_HELD = 8


def features(x: Tensor, pooling: str = "mean") -> Tensor:
    """``[N, L, D]`` audio tokens as ``[N, F]`` vectors: token mean (``"mean"``) or all tokens (``"flat"``)."""
    if x.dim() == 2:
        return x.double()
    if pooling == "mean":
        return x.double().mean(dim=1)
    if pooling == "flat":
        return x.double().flatten(1)
    raise ValueError(f"pooling must be 'mean' or 'flat', got {pooling!r}")


def frechet_ratio(
    train: Tensor, held: Tensor, fake: Tensor, pca_dim: int = 8, repeats: int = 32, seed: int = 0
) -> dict[str, float]:
    """``fd`` (fake vs held), ``fd_baseline`` (train vs held) at equal ``n`` and their ratio ``fd_ratio``."""
    real = torch.cat([train, held])
    mean, axes = MF.pca_projection(real, pca_dim)
    t, h, f = ((x.double() - mean) @ axes for x in (train, held, fake))
    n = min(h.shape[0], t.shape[0], f.shape[0])
    gen = torch.Generator().manual_seed(seed)
    fd = base = 0.0
    for _ in range(repeats):
        hs = h[torch.randperm(h.shape[0], generator=gen)[:n]]
        fd += float(MF.frechet_distance(f[torch.randperm(f.shape[0], generator=gen)[:n]], hs))
        base += float(MF.frechet_distance(t[torch.randperm(t.shape[0], generator=gen)[:n]], hs))
    fd, base = fd / repeats, base / repeats
    return {"fd": fd, "fd_baseline": base, "fd_ratio": fd / max(base, 1e-12)}


def knn_recall(held: Tensor, fake: Tensor, k: int = 3, seed: int = 0) -> float:
    """Share of ``held`` inside some synthetic sample's ``k``-NN ball (synthetic subsampled to ``|held|``)."""
    gen = torch.Generator().manual_seed(seed)
    f = fake[torch.randperm(fake.shape[0], generator=gen)[: held.shape[0]]]
    k = min(k, f.shape[0] - 1)
    radii = MF.knn_radii(f, k)
    return float((MF._cdist(held, f) <= radii[None, :]).any(1).double().mean())


def memorization_ratio(train: Tensor, held: Tensor, fake: Tensor) -> float:
    """Median nearest-training-clip distance of synthetic samples over that of held-out clips."""
    fake_nn = MF._cdist(fake, train).min(1).values.median()
    held_nn = MF._cdist(held, train).min(1).values.median()
    return float(fake_nn / held_nn.clamp_min(1e-12))


def class_quality(
    train: Tensor, held: Tensor, fake: Tensor, pca_dim: int = 8, repeats: int = 32, k: int = 3, seed: int = 0
) -> dict[str, float]:
    """Every score of the module docstring for one class (features ``[N, F]``; ``held`` ≥ 2 clips)."""
    train, held, fake = train.double(), held.double(), fake.double()
    out = frechet_ratio(train, held, fake, pca_dim, repeats, seed)
    out["diversity_ratio"] = float(MF.diversity_ratio(held, fake))
    out["recall"] = knn_recall(held, fake, k, seed)
    out["memorization_ratio"] = memorization_ratio(train, held, fake)
    return out


def reference_samplers(train: Tensor, rank: int = 8, seed: int = 0) -> dict[str, Callable[[int], Tensor]]:
    """``n → samples`` of the three references, fitted to one class's training features ``[N, F]``.

    ``gaussian`` has covariance ``U diag(λ) Uᵀ + diag(residual)``: the top-``rank`` principal axes of the
    training clips plus each dimension's remaining variance.
    """
    x = train.double()
    mean = x.mean(0)
    xc = x - mean
    r = min(rank, x.shape[0] - 1)
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    scale = s[:r] / (x.shape[0] - 1) ** 0.5
    axes = vh[:r]
    residual = (xc - (xc @ axes.T) @ axes).var(0).sqrt()
    gen = torch.Generator().manual_seed(seed)

    def gaussian(n: int) -> Tensor:
        z = torch.randn(n, r, generator=gen, dtype=x.dtype)
        return mean + (z * scale) @ axes + torch.randn(n, x.shape[1], generator=gen, dtype=x.dtype) * residual

    return {
        "centroid": lambda n: mean.expand(n, -1).clone(),
        "gaussian": gaussian,
        "resampled": lambda n: x[torch.randint(x.shape[0], (n,), generator=gen)],
    }


def evaluate_classes(
    train: Mapping[str, Tensor],
    held: Mapping[str, Tensor],
    sample: Callable[[str, int], Tensor],
    num_samples: int = 64,
    pooling: str = "mean",
    probe: LinearProbe | None = None,
    seed: int = 0,
    label_order: list[str] | None = None,
    repeats: int = 32,
) -> dict[str, dict[str, float]]:
    """Score ``sample(class, n)`` against every class of ``held`` (class → ``[N, ...]`` real features;
    ``repeats``: subsamples per Fréchet distance).

    Returns ``{class: scores}`` with the scores of :func:`class_quality`, ``synthetic_accuracy`` and
    ``real_accuracy`` of ``probe`` (fitted on real training features of all classes; fitted here when
    ``None``; its class indices follow ``label_order``, default the classes of ``held``) and
    ``tstr_accuracy``: a probe trained on the synthetic samples only, tested on ``held``.
    """
    classes = list(held)
    train_f = {c: features(train[c], pooling) for c in classes}
    held_f = {c: features(held[c], pooling) for c in classes}
    fake_f = {c: features(sample(c, num_samples), pooling) for c in classes}
    labels = {c: i for i, c in enumerate(label_order or classes)}
    if probe is None:
        probe = fit_probe(train_f, labels)
    tstr = fit_probe(fake_f, labels)
    out = {}
    for c in classes:
        scores = class_quality(train_f[c], held_f[c], fake_f[c], repeats=repeats, seed=seed)
        scores["synthetic_accuracy"] = float((probe.predict(fake_f[c]) == labels[c]).double().mean())
        scores["real_accuracy"] = float((probe.predict(held_f[c]) == labels[c]).double().mean())
        scores["tstr_accuracy"] = float((tstr.predict(held_f[c]) == labels[c]).double().mean())
        out[c] = scores
    return out


def fit_probe(by_class: Mapping[str, Tensor], labels: Mapping[str, int]) -> LinearProbe:
    """A linear probe on ``[N, F]`` features per class, class indices from ``labels``."""
    x = torch.cat([by_class[c] for c in by_class])
    y = torch.cat([torch.full((by_class[c].shape[0],), labels[c], dtype=torch.long) for c in by_class])
    return fit_linear_probe(x, y, max(labels.values()) + 1)


def summarize(per_class: Mapping[str, Mapping[str, float]], num_classes: int | None = None) -> dict[str, float]:
    """Means over classes, the lowest diversity ratio, the probe and TSTR accuracies as ratios to the
    real held-out accuracy (1 = as recognisable as real clips), and ``ignores_conditioning`` (1.0 when
    the probe recognises real clips, accuracy ≥ 0.5, but puts synthetic ones within twice chance of
    ``num_classes``; default the number of classes scored)."""
    names = sorted({n for scores in per_class.values() for n in scores})
    out = {n: sum(s[n] for s in per_class.values()) / len(per_class) for n in names}
    out["min_diversity_ratio"] = min(s["diversity_ratio"] for s in per_class.values())
    if out.get("real_accuracy"):
        out["probe_ratio"] = out["synthetic_accuracy"] / out["real_accuracy"]
        out["tstr_ratio"] = out["tstr_accuracy"] / out["real_accuracy"]
        chance = 1.0 / (num_classes or len(per_class))
        out["ignores_conditioning"] = float(out["real_accuracy"] >= 0.5 and out["synthetic_accuracy"] <= 2 * chance)
    return out
