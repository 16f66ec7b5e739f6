"""Sampling calibration: the class mean and within-class spread that decoded latents do not reproduce.

A VAE trained on tens of clips per class explains part of the class's spread with its latent; the rest
is added at sampling. Training keeps each class's data statistics (mean, per-element variance and the
top directions of the within-class covariance, pooled over every training sample); at
sampling, draws of the *current* decoder show what it reproduces, and the samples are re-centred on
the class mean and topped up with Gaussian noise whose covariance is the gap: its diagonal (every
element) and a low-rank part (the directions the latent misses most, which in audio embeddings span
all tokens at once). Measuring the decoder at sampling time, not during training, keeps the
calibration right when the decoder changes after the class was last trained: FedAvg replaces it by an
average of clients' decoders, and a generator shared through clients drifts as it learns others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: for the small matrices here, many short parallel sections cost far more
    than they save, and 15–100× more on a busy machine (measured: a calibration step of 12 classes took
    0.58 s on two threads of a loaded 2-core machine, 0.036 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def stable_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of symmetric ``matrix`` (``[..., k, k]``) in float64, shifted by a ridge of 1e-12 of
    its largest absolute diagonal entry (taken off the eigenvalues again; the eigenvectors are those of the
    matrix itself). The Gram matrices here come from padded factors: mostly zero, some rows nearly so. Their
    clusters of tiny eigenvalues can stop LAPACK's divide-and-conquer from converging: it failed on 37 of 40
    such ``[400, 400]`` matrices on an AVX-512 Xeon (in float32 too), on none with the ridge."""
    matrix = matrix.double()
    ridge = 1e-12 * matrix.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-30)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    values, vectors = torch.linalg.eigh(matrix + ridge[..., None, None] * eye)
    return values - ridge[..., None], vectors


def top_positive(factors: torch.Tensor, weights: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-``rank`` positive part of ``factors diag(weights) factorsᵀ`` (``factors``: ``[..., F, k]``,
    ``weights``: ``[..., k]``) as a basis ``[..., rank, F]`` (covariance ``basisᵀ basis``).

    Everything is done in the span of the factors: from the eigendecomposition of the small Gram matrix
    ``factorsᵀ factors`` and of the matrix in that span, never with an ``F × F`` matrix or a QR of a
    tall one. Leading dimensions are batched; zero columns (padding) add nothing.
    """
    gram_values, gram_vectors = stable_eigh(factors.transpose(-1, -2) @ factors)
    keep = gram_values > gram_values.amax(-1, keepdim=True).clamp_min(1e-30) * 1e-6
    root = torch.where(keep, gram_values.clamp_min(0).sqrt(), 0.0)
    inverse_root = torch.where(keep, 1.0 / root.where(keep, 1.0), 0.0)
    coords = gram_vectors.transpose(-1, -2) * root[..., :, None]  # factors = span @ coords, span orthonormal
    values, vectors = stable_eigh((coords * weights.double()[..., None, :]) @ coords.transpose(-1, -2))
    values, vectors = values[..., -rank:].clamp_min(0), vectors[..., -rank:]
    coefficients = (gram_vectors * inverse_root[..., None, :]) @ (vectors * values.sqrt()[..., None, :])
    # the basis as rows (coefficientsᵀ factorsᵀ), the layout it is stored in
    top = coefficients.transpose(-1, -2).to(factors.dtype) @ factors.transpose(-1, -2)
    if top.shape[-2] < rank:  # fewer directions than the rank: pad with zeros
        top = torch.cat([top.new_zeros(*top.shape[:-2], rank - top.shape[-2], top.shape[-1]), top], dim=-2)
    return top


def top_directions(factors: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-``rank`` part of ``factors factorsᵀ`` (``factors``: ``[..., F, k]``) as a basis ``[..., rank, F]``:
    :func:`top_positive` with every weight one, from one small eigendecomposition (``factors v`` for the
    top eigenvectors ``v`` of ``factorsᵀ factors`` are the covariance's top directions, scaled by their
    standard deviations)."""
    rows = factors.transpose(-1, -2)  # [..., k, F]
    _, vectors = stable_eigh(rows @ factors)
    top = vectors[..., -rank:].transpose(-1, -2).to(factors.dtype) @ rows
    if top.shape[-2] < rank:  # fewer directions than the rank: pad with zeros
        top = torch.cat([top.new_zeros(*top.shape[:-2], rank - top.shape[-2], top.shape[-1]), top], dim=-2)
    return top


def average_bases(bases: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Row by row, the top ``r`` directions ``[R, r, F]`` of ``Σₖ weights[k, row] · basesₖ[row]ᵀ basesₖ[row]``
    (``bases``: ``K`` tensors ``[R, r, F]``; ``weights``: ``[K, R]``).

    Only the copies that weigh in a row join its factors, and copies holding the same basis in a row join
    once, with their weights summed: the covariance is the same, and after an average every copy holds the
    same state, so a row that no copy calibrated since comes from one basis, not ``K``. (Joining all ``K``
    copies' factors made the average of 100 copies of a 50-class generator take 5.4 s, mostly in
    eigendecompositions of ``[800, 800]`` Gram matrices.)
    """
    rows, rank, features = bases[0].shape
    ramp = torch.linspace(1.0, 2.0, features, dtype=bases[0].dtype, device=bases[0].device)
    signatures = torch.stack([(b @ ramp).sum(-1) for b in bases]).tolist()  # [K][R]: equal bases, equal sums
    by_copy = weights.tolist()
    members: list[list[list]] = []  # per row: [copy, summed weight] of each distinct basis that weighs in
    for row in range(rows):
        found: list[list] = []
        alike: dict[float, list[int]] = {}  # signature -> positions in found (equal signatures are compared)
        for k, w in enumerate(by_copy):
            if w[row] <= 0:
                continue
            candidates = alike.get(signatures[k][row], [])
            i = next((i for i in candidates if torch.equal(bases[found[i][0]][row], bases[k][row])), None)
            if i is None:
                alike.setdefault(signatures[k][row], []).append(len(found))
                found.append([k, w[row]])
            else:
                found[i][1] += w[row]
        members.append(found)
    joined = bases[0].new_zeros(rows, max(map(len, members), default=1) * rank, features)
    for row, found in enumerate(members):
        for i, (k, w) in enumerate(found):
            joined[row, i * rank : (i + 1) * rank] = bases[k][row] * w**0.5
    return top_directions(joined.transpose(-1, -2), rank)


def pooled_basis(basis: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The top ``r`` directions ``[..., r, F]`` of ``basisᵀ basis + factors factorsᵀ`` (``basis``: ``[..., r, F]``,
    ``factors``: ``[..., F, k]``): a low-rank sum of covariances."""
    rank = basis.shape[-2]
    joined = torch.cat([basis, factors.transpose(-1, -2).to(basis.dtype)], dim=-2).transpose(-1, -2)
    return top_directions(joined, rank)


def covariance_gap_basis(data: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """The top directions ``[..., r, F]`` of ``dataᵀ data − decodedᵀ decoded`` (bases ``[..., r, F]``)."""
    rank = data.shape[-2]
    weights = torch.cat([data.new_ones(rank), -data.new_ones(decoded.shape[-2])])
    joined = torch.cat([data, decoded], dim=-2).transpose(-1, -2)
    return top_positive(joined, weights.expand(*joined.shape[:-2], weights.shape[0]), rank)


def group_factors(x: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per group of ``x`` ``[B, F]`` (``groups``: ``[B]`` labels): the labels ``[G]``, sample counts
    ``[G]``, means ``[G, F]``, within-group variances ``[G, F]`` and covariance factors ``[G, F, m]``
    (``m``: the largest count; zero columns pad smaller groups)."""
    if bool((groups == groups[0]).all()):  # one group (every batch of a per-class generator): no scatter
        mean = x.mean(0, keepdim=True)
        factors = ((x - mean).T / max(x.shape[0] - 1, 1) ** 0.5)[None]
        return groups[:1], groups.new_full((1,), x.shape[0]), mean, factors.square().sum(-1), factors
    labels, inverse, counts = groups.unique(return_inverse=True, return_counts=True)
    sums = x.new_zeros(len(labels), x.shape[1]).index_add_(0, inverse, x)
    means = sums / counts[:, None].to(x.dtype)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(x.shape[0], device=x.device) - starts[inverse[order]]
    padded = x.new_zeros(len(labels), int(counts.max()), x.shape[1])
    padded[inverse[order], position] = (x - means[inverse])[order]
    factors = padded.transpose(1, 2) / (counts - 1).clamp_min(1).to(x.dtype).sqrt()[:, None, None]
    return labels, counts, means, factors.square().sum(-1), factors


FINGERPRINT_CHUNKS = 16


def fingerprint_width(cond_shapes: list[list[int]]) -> int:
    """The width of :func:`class_fingerprint` for conditioning tensors of these per-row shapes."""
    return sum(2 * min(FINGERPRINT_CHUNKS, math.prod(shape)) for shape in cond_shapes)


def class_fingerprint(cond: list[torch.Tensor]) -> torch.Tensor:
    """A short summary ``[n, K]`` of conditioning rows (per tensor: the mean and RMS of 16 equal slices
    of each flattened row), enough to tell the stored prompts of a class set apart."""
    parts = []
    for tensor in cond:
        flat = tensor.detach().flatten(1).double()
        for piece in torch.tensor_split(flat, min(FINGERPRINT_CHUNKS, flat.shape[1]), dim=1):
            parts += [piece.mean(1), piece.square().mean(1).sqrt()]
    return torch.stack(parts, dim=1).float()


class SamplingCalibration(nn.Module):
    """The data statistics a generator needs at sampling time, per class it serves.

    Each row (one per class; one for a generator of a single class) holds the class's mean, per-element
    variance and the top directions of its covariance, pooled exactly over every training sample the row
    saw since it was reset (each batch's moments plus the spread of batch means), stored multiplied by
    ``mass``, the number of samples pooled. Data statistics do not depend on the model, so every sample
    counts alike: a class split over clients that train one shared generator in turn is calibrated on all
    of its clips, not on the last client's (an exponential moving average over batches was). Averaging
    copies trained apart weights each row by how much each copy saw of that class (:meth:`average_state`).

    A generator of several classes finds a sample's row from its conditioning (``keys``: fingerprints of
    its classes' stored prompts). Any other prompt gets diagonal noise from the variance pooled over the
    rows, with no re-centring and no low-rank part: the means and low-rank spreads of classes differ too
    much to pool.
    """

    def __init__(self, shape: tuple[int, int], rows: int = 1, rank: int = 8, key_width: int = 0) -> None:
        super().__init__()
        self.shape = shape
        flat = shape[0] * shape[1]
        self.register_buffer("mass", torch.zeros(rows))
        self.register_buffer("fresh", torch.zeros(rows))  # samples per row since the last average_state
        self.register_buffer("data_mean", torch.zeros(rows, flat))
        self.register_buffer("data_var", torch.zeros(rows, flat))
        self.register_buffer("data_basis", torch.zeros(rows, rank, flat))
        self.register_buffer("keys", torch.zeros(rows if rows > 1 else 0, key_width))
        self._held: tuple[torch.Tensor, torch.Tensor, int] | None = None  # see repeats()

    @property
    def calibrated(self) -> bool:
        self.flush()
        return bool(self.mass.sum() > 0)

    def set_classes(self, class_cond: list[torch.Tensor]) -> None:
        """Fingerprint the conditioning rows ``[rows, *shape]`` of the classes, in row order (a generator
        of one class needs none: every prompt is its class's)."""
        if not self.keys.shape[0]:
            return
        if class_cond[0].shape[0] != self.mass.shape[0]:
            raise ValueError(f"{class_cond[0].shape[0]} class prompts for {self.mass.shape[0]} calibration rows")
        self.flush()  # a held batch's rows were found with the old prompts
        self.keys.copy_(class_fingerprint(class_cond))

    def rows(self, cond: list[torch.Tensor] | None) -> torch.Tensor:
        """The row of each conditioning row (``-1``: a prompt of none of the classes)."""
        n = cond[0].shape[0] if cond else 1
        if not self.keys.shape[0]:
            return torch.zeros(n, dtype=torch.long, device=self.mass.device)
        distance = torch.cdist(class_fingerprint(cond).to(self.keys.device), self.keys)
        best = distance.argmin(1)
        known = distance.gather(1, best[:, None])[:, 0] <= 1e-3 * self.keys.norm(dim=1)[best] + 1e-6
        return torch.where(known, best, torch.full_like(best, -1))

    _deferred: list[tuple[SamplingCalibration, torch.Tensor, torch.Tensor]] | None = None
    _holding: dict[int, SamplingCalibration] | None = None

    @classmethod
    @contextmanager
    def deferred(cls) -> Iterator[None]:
        """Within: :meth:`update` calls are collected and run on exit, those of one-row batches of equal
        size as one batched update (a stacked training step calibrates every generator of the stack); within
        :meth:`repeats` too, each batch first meets the one its calibration holds."""
        outer, cls._deferred = cls._deferred, []
        try:
            yield
            pending = cls._deferred
        finally:
            cls._deferred = outer
        pool_batches([batch for calibration, rows, data in pending for batch in calibration._take(rows, data)])

    @classmethod
    @contextmanager
    def repeats(cls) -> Iterator[None]:
        """Within (a client visit's local epochs): a batch equal, sample for sample in any order, to the last
        one a calibration got is counted instead of pooled again. The batch a calibration holds is pooled
        once, weighted by its count, when a different batch comes, before anything reads the statistics
        (:meth:`flush`) and on exit, where the held batches are pooled together.

        Each local epoch of a class that fits one batch shows its generator the same samples. Pooling them
        once with weight ``m`` gives the statistics of pooling them ``m`` times: mass, mean and variance
        exactly (Chan et al.'s pooling is associative, and repeats add no spread of batch means), the basis
        truncated to its rank once instead of ``m`` times. Ten local epochs then cost one update, not ten."""
        outer, cls._holding = cls._holding, {}
        try:
            yield
        finally:
            holding, cls._holding = cls._holding, outer
            pool_batches([batch for calibration in holding.values() for batch in calibration._release()])

    def _take(self, rows: torch.Tensor, data: torch.Tensor) -> list[CountedBatch]:
        """The batches to pool now for an update with ``rows``/``data``: this one, or, within :meth:`repeats`,
        none (it is held, or counted as a repeat of the held one) or the batch it replaces."""
        holding = SamplingCalibration._holding
        if holding is None:
            return [(self, rows, data, 1)]
        # an order in which equal batches compare equal: by a sum over a few features (one feature can be
        # constant, e.g. where the data are standardized; ties between different samples only cost a repeat)
        order = data.flatten(1)[:, :: max(data[0].numel() // 32, 1)].sum(1).argsort()
        rows, data = rows[order], data.index_select(0, order)  # a fifth of the time of data[order] here
        if self._held is not None and torch.equal(self._held[0], rows) and torch.equal(self._held[1], data):
            self._held = (rows, data, self._held[2] + 1)
            return []
        released = self._release()
        self._held = (rows, data, 1)
        holding[id(self)] = self
        return released

    def _release(self) -> list[CountedBatch]:
        """The held batch (none outside :meth:`repeats`), no longer held."""
        held, self._held = self._held, None
        if SamplingCalibration._holding is not None:
            SamplingCalibration._holding.pop(id(self), None)
        return [] if held is None else [(self, *held)]

    def flush(self) -> None:
        """Pool the batch held by :meth:`repeats`, if any (everything that reads the statistics calls it)."""
        if self._held is not None:
            pool_batches(self._release())

    @torch.no_grad()
    def update(self, rows: torch.Tensor, data: torch.Tensor) -> None:
        """Pool the samples of ``data`` ``[B, L, D]`` into the statistics of their rows (``rows``: ``[B]``;
        rows with fewer than two samples in the batch are left out)."""
        if SamplingCalibration._deferred is not None:
            SamplingCalibration._deferred.append((self, rows, data.detach()))
            return
        pool_batches(self._take(rows, data.detach()))

    @torch.no_grad()
    def pool_batch(self, rows: torch.Tensor, data: torch.Tensor, count: int = 1) -> None:
        """Pool ``count`` copies of the batch ``data`` ``[B, L, D]`` into the statistics of ``rows`` ``[B]``, now."""
        with one_thread(), torch.autocast(data.device.type, enabled=False):  # statistics in full precision
            labels, counts, mean, var, factor = group_factors(data.flatten(1).to(self.data_mean.dtype), rows)
            use = (labels >= 0) & (counts >= 2)
            if not bool(use.any()):
                return
            idx = labels[use]
            state = {name: getattr(self, name)[idx] for name in POOLED}
            pooled = pool(state, count * counts[use].to(self.mass.dtype), mean[use], var[use], factor[use])
            for name, value in pooled.items():
                getattr(self, name)[idx] = value

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        self.flush()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self._release()  # the loaded statistics replace those the held batch was to be pooled into
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def average_state(self, sources: list[tuple[nn.Module, float]]) -> dict[str, torch.Tensor]:
        """The state of the average of copies trained apart (FedAvg), for every copy to load.

        Each row averages the copies that calibrated it since the last average, weighted by how many of
        that class's samples each saw (the copies' overall sample counts are not the class's); a row that
        no copy calibrated averages all of them equally. Covariances are averaged as covariances (the
        copies' factors are joined and truncated again), not factor by factor, which would cancel
        directions whose signs differ.
        """
        copies = [module for module, _ in sources]
        for calibration in [self, *copies]:
            calibration.flush()
        fresh = torch.stack([c.fresh for c in copies])  # [K, R]
        total = fresh.sum(0)
        weights = torch.where(total > 0, fresh / total.clamp_min(1), torch.full_like(fresh, 1 / len(copies)))
        state = {"fresh": torch.zeros_like(self.fresh), "keys": self.keys.clone()}
        for name in ("mass", "data_mean", "data_var"):
            stacked = torch.stack([getattr(c, name) for c in copies])
            state[name] = (weights.view(*weights.shape, *[1] * (stacked.dim() - 2)) * stacked).sum(0)
        if self.data_basis.shape[1]:
            with one_thread():
                state["data_basis"] = average_bases([c.data_basis for c in copies], weights)
        else:
            state["data_basis"] = self.data_basis.clone()
        return state

    @torch.no_grad()
    def correct(
        self,
        rows: torch.Tensor,
        decoded: torch.Tensor,
        reference: Callable[[int], torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Calibrated samples ``[n, L, D]`` from ``decoded`` prior draws ``[n, L, D]`` of ``rows`` (``[n]``).

        ``reference(row)`` gives many decoder draws ``[K, L, D]`` with that row's conditioning (``-1`` too):
        what the decoder reproduces of the class; it is called only for rows that need it. A class's samples are moved to its
        mean and get the covariance gap as noise; samples of other prompts get the diagonal gap to the
        pooled within-class variance. Rows never calibrated are left as decoded.
        """
        n, flat = decoded.shape[0], decoded[0].numel()
        if not self.calibrated:
            return decoded
        with one_thread(), torch.autocast(decoded.device.type, enabled=False):
            out = decoded.flatten(1).to(self.data_mean.dtype, copy=True)
            noise = torch.randn(n, flat, generator=generator, device=out.device)
            rank = self.data_basis.shape[1]
            weights = torch.randn(n, rank, generator=generator, device=out.device) if rank else None
            for row in rows.unique().tolist():
                if row >= 0 and self.mass[row] <= 0:
                    continue
                pick = rows == row
                draws = reference(row).flatten(1).to(out.dtype)
                _, _, ref_mean, ref_var, ref_factor = group_factors(draws, rows.new_zeros(draws.shape[0]))
                if row < 0:
                    var = self.data_var.sum(0) / self.mass.sum()
                    out[pick] += noise[pick] * (var - ref_var[0]).clamp_min(0).sqrt()
                    continue
                mass = self.mass[row]
                rest = self.data_var[row] / mass - ref_var[0]
                out[pick] += self.data_mean[row] / mass - ref_mean[0]
                if weights is not None:
                    decoded_top = top_directions(ref_factor[0], rank)
                    gap = covariance_gap_basis(self.data_basis[row] / mass.sqrt(), decoded_top)
                    rest = rest - gap.square().sum(0)
                    out[pick] += weights[pick] @ gap
                out[pick] += noise[pick] * rest.clamp_min(0).sqrt()
            return out.view_as(decoded).to(decoded.dtype)


POOLED = ("mass", "fresh", "data_mean", "data_var", "data_basis")


def pool(
    state: dict[str, torch.Tensor], n: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, factor: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Rows ``state`` (the :data:`POOLED` buffers of ``G`` rows) with batches pooled in exactly (Chan et al.):
    ``n`` ``[G]`` samples with mean ``[G, F]``, per-element variance ``[G, F]`` and covariance factors
    ``[G, F, m]``. Returns the new rows (the basis only when it has a rank)."""
    seen = state["mass"]
    total = seen + n
    shift = mean - state["data_mean"] / seen.clamp_min(1e-12)[:, None]  # batch mean - pooled mean
    between = seen * n / total  # weight of the shift in the pooled second moments
    new = {
        "fresh": state["fresh"] + n,
        "mass": total,
        "data_mean": state["data_mean"] + n[:, None] * mean,
        "data_var": state["data_var"] + (n[:, None] * var + between[:, None] * shift.square()),
    }
    if state["data_basis"].shape[1]:
        rows = torch.cat(
            [factor.transpose(1, 2) * n.sqrt()[:, None, None], (shift * between.sqrt()[:, None])[:, None]], 1
        )
        new["data_basis"] = pooled_basis(state["data_basis"], rows.transpose(1, 2))
    return new


CountedBatch = tuple[SamplingCalibration, torch.Tensor, torch.Tensor, int]  # calibration, rows, data, count


def pool_batches(batches: list[CountedBatch]) -> None:
    """Pool every batch (``count`` copies of ``data`` into ``rows`` of its calibration), those of one row and
    equal shapes as one batched update (:func:`update_rows`)."""
    batched: dict[tuple, list] = {}
    for calibration, rows, data, count in batches:
        whole = data.shape[0] >= 2 and int(rows[0]) >= 0 and bool((rows == rows[0]).all())
        if whole:
            shape = (tuple(data.shape), tuple(calibration.data_basis.shape), data.dtype, data.device)
            batched.setdefault(shape, []).append((calibration, int(rows[0]), data, count))
        else:
            calibration.pool_batch(rows, data, count)
    for entries in batched.values():
        update_rows(entries)


@torch.no_grad()
def update_rows(entries: list[tuple[SamplingCalibration, int, torch.Tensor, int]]) -> None:
    """:meth:`SamplingCalibration.pool_batch` of many calibrations at once, each with ``count`` copies of one batch
    ``[B, L, D]`` (one ``B`` for all) of one row: the same pooled statistics, computed batched over the
    calibrations."""
    calibrations = [c for c, _, _, _ in entries]
    index = [row for _, row, _, _ in entries]
    with one_thread(), torch.autocast(entries[0][2].device.type, enabled=False):
        x = torch.stack([d.flatten(1) for _, _, d, _ in entries]).to(calibrations[0].data_mean.dtype)  # [K, B, F]
        mean = x.mean(1)
        factor = (x - mean[:, None]).transpose(1, 2) / max(x.shape[1] - 1, 1) ** 0.5  # [K, F, B]
        state = {name: torch.stack([getattr(c, name)[row] for c, row in zip(calibrations, index)]) for name in POOLED}
        n = x.new_tensor([count * x.shape[1] for _, _, _, count in entries])
        pooled = pool(state, n, mean, factor.square().sum(-1), factor)
        for k, (calibration, row) in enumerate(zip(calibrations, index)):
            for name, value in pooled.items():
                getattr(calibration, name)[row] = value[k]
