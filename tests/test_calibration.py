"""The sampling-noise calibration: within-class covariances, their low-rank averages and their gap."""

import torch
from lightning.pytorch import Callback

from a2vgen.federation.aggregation import weighted_average
from a2vgen.modules import PerClassGenerator
from a2vgen.nn import ConditionalVAE
from a2vgen.nn import calibration as calibration_module
from a2vgen.nn.calibration import (
    SamplingCalibration,
    average_bases,
    covariance_gap_basis,
    group_factors,
    pooled_basis,
    top_directions,
    top_positive,
)
from conftest import module_for, small_datamodule
from federation_helpers import federated_fit
from test_resume import CLIENTS


def test_group_factors_give_each_groups_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 6, generator=g, dtype=torch.float64)
    groups = torch.tensor([2, 0, 2, 2, 0, 5, 5, 2, 0, 5, 2])
    labels, counts, means, variances, factors = group_factors(x, groups)
    assert labels.tolist() == [0, 2, 5] and counts.tolist() == [3, 5, 3]
    assert factors.shape == (3, 6, 5)  # padded to the largest group
    for k, label in enumerate(labels.tolist()):
        members = x[groups == label]
        assert torch.allclose(means[k], members.mean(0))
        assert torch.allclose(factors[k] @ factors[k].t(), torch.cov(members.t()))
        assert torch.allclose(variances[k], members.var(0))
    labels, counts, means, variances, factors = group_factors(x, torch.full((11,), 4))  # one group: its own path
    assert labels.tolist() == [4] and counts.tolist() == [11] and factors.shape == (1, 6, 11)
    assert torch.allclose(means[0], x.mean(0)) and torch.allclose(variances[0], x.var(0))
    assert torch.allclose(factors[0] @ factors[0].t(), torch.cov(x.t()))


def test_top_directions_are_the_covariances_top_eigenvectors():
    g = torch.Generator().manual_seed(0)
    for columns in (12, 3):  # more factor columns than the rank, and fewer (zero rows pad the basis)
        factors = torch.randn(2, 20, columns, generator=g, dtype=torch.float64)
        basis = top_directions(factors, 5)
        assert basis.shape == (2, 5, 20)
        for k in range(2):
            values, vectors = torch.linalg.eigh(factors[k] @ factors[k].T)
            top = (vectors[:, -5:] * values[-5:].clamp_min(0)) @ vectors[:, -5:].T
            assert torch.allclose(basis[k].T @ basis[k], top, atol=1e-9)


def test_bases_of_mostly_zero_factors_like_fedavgs_joined_copies():
    """FedAvg joins every copy's basis (here 50 copies x rank 8): most are zero (copies that never saw the
    class), some rows nearly so. Plain float64 ``eigh`` of such Gram matrices failed to converge on an AVX-512
    Xeon (37 of 40 draws like these); the result must be the covariance's top directions all the same."""
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        rows = torch.zeros(10, 400, 64)
        for b in range(10):
            strong = torch.randn(4, 64, generator=g) * 3
            tiny = torch.randn(4, 64, generator=g) * 1e-7
            rows[b, torch.randperm(400, generator=g)[:8]] = torch.cat([strong, tiny])
        factors = rows.transpose(-1, -2)
        for basis in (top_directions(factors, 8), top_positive(factors, torch.ones(10, 400), 8)):
            cov = (factors @ rows).double()
            values, vectors = torch.linalg.eigh(cov)  # [64, 64]: the direct way, fine at this size
            top = (vectors[..., -8:] * values[..., None, -8:].clamp_min(0)) @ vectors[..., -8:].transpose(-1, -2)
            got = (basis.transpose(-1, -2) @ basis).double()
            torch.testing.assert_close(got, top, rtol=1e-4, atol=1e-4 * float(top.abs().max()))


def test_averaged_bases_join_each_distinct_basis_that_weighs_in_once():
    """FedAvg's covariance average, row by row: copies of zero weight and repeated bases (what every copy
    holds after an average) change nothing, so they are left out or merged; the top directions are those of
    the weighted sum of covariances all the same."""
    g = torch.Generator().manual_seed(0)
    distinct = [torch.randn(3, 4, 20, generator=g) for _ in range(4)]
    bases = [distinct[0], distinct[1], distinct[0].clone(), distinct[2], distinct[3], distinct[0].clone()]
    weights = torch.rand(6, 3, generator=g)
    weights[3, 0] = weights[4, :2] = 0.0  # copies that did not calibrate those rows
    got = average_bases(bases, weights)
    joined = torch.cat([b * w.sqrt()[:, None, None] for b, w in zip(bases, weights)], dim=1)
    for row in range(3):
        cov = sum(float(w) * b[row].T.double() @ b[row].double() for b, w in zip(bases, weights[:, row]))
        values, vectors = torch.linalg.eigh(cov)
        top = (vectors[:, -4:] * values[-4:]) @ vectors[:, -4:].T
        torch.testing.assert_close((got[row].T @ got[row]).double(), top, rtol=1e-4, atol=1e-4 * float(top.abs().max()))
    old = top_directions(joined.transpose(-1, -2), 4)  # joining every copy, as before
    torch.testing.assert_close(got.transpose(-1, -2) @ got, old.transpose(-1, -2) @ old, rtol=1e-4, atol=1e-3)
    # a row that every copy holds alike is that basis's covariance, from one copy's factors
    assert average_bases([torch.zeros(0, 4, 20)] * 2, torch.ones(2, 0)).shape == (0, 4, 20)  # no rows yet
    same = average_bases([distinct[1].clone() for _ in range(50)], torch.full((50, 3), 1 / 50))
    torch.testing.assert_close(
        same.transpose(-1, -2) @ same, distinct[1].transpose(-1, -2) @ distinct[1], rtol=1e-4, atol=1e-4
    )


def test_low_rank_sums_recover_the_directions_the_decoder_misses():
    g = torch.Generator().manual_seed(0)
    axes = torch.linalg.qr(torch.randn(30, 3, generator=g)).Q.double()
    scales = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    data = torch.zeros(4, 30, dtype=torch.float64)
    decoded = torch.zeros(4, 30, dtype=torch.float64)
    one_group = torch.zeros(32, dtype=torch.long)
    for _ in range(200):
        coeff = torch.randn(32, 3, generator=g, dtype=torch.float64) * scales
        real = coeff @ axes.t() + 0.1 * torch.randn(32, 30, generator=g, dtype=torch.float64)
        # the decoder reproduces the second axis only: the gap is the first and third
        decoding = coeff[:, 1:2] @ axes[:, 1:2].t() + 0.1 * torch.randn(32, 30, generator=g, dtype=torch.float64)
        data = pooled_basis(data, group_factors(real, one_group)[4][0])  # sums of 200 batch covariances
        decoded = pooled_basis(decoded, group_factors(decoding, one_group)[4][0])
    gap = covariance_gap_basis(data / 200**0.5, decoded / 200**0.5)
    along = (gap @ axes).square().sum(0)  # the gap's variance along each true axis
    assert torch.allclose(along[[0, 2]], scales[[0, 2]].square(), rtol=0.25), along
    assert along[1] < 0.25 * scales[1] ** 2, along
    assert gap.square().sum() < 1.3 * (scales[0] ** 2 + scales[2] ** 2)  # no spurious directions


SEED = 0


def low_rank_class(n: int, g: torch.Generator, shift: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples ``[n, 4, 16]`` around ``shift`` with three principal axes (variances 9, 4, 1.5)."""
    axes = torch.linalg.qr(torch.randn(64, 3, generator=g)).Q
    x = shift + (torch.randn(n, 3, generator=g) * torch.tensor([9.0, 4.0, 1.5]).sqrt()) @ axes.T
    return (x + 0.1 * torch.randn(n, 64, generator=g)).view(n, 4, 16), torch.tensor([9.01, 4.01, 1.51])


def top_eigenvalues(samples: torch.Tensor, k: int = 3) -> torch.Tensor:
    return torch.linalg.eigvalsh(torch.cov(samples.flatten(1).T.double())).flip(0)[:k].float()


def test_samples_follow_the_class_even_after_the_decoder_changes():
    """The calibration measures the decoder when it samples: replacing the decoder (as FedAvg does, or
    later training on other classes) keeps the samples on the class's mean and spread."""
    g = torch.Generator().manual_seed(0)
    x, eigenvalues = low_rank_class(2000, g)
    cond = [torch.randn(1, 6, 8, generator=g)]
    torch.manual_seed(SEED)  # the decoder's initial weights
    vae = ConditionalVAE([4, 16], [[6, 8]], hidden_dim=32, latent_dim=4, cond_width=8)
    for batch in x.split(50):
        vae.calibrate(batch, cond, torch.zeros(len(batch), dtype=torch.long))
    for step in ("trained", "replaced"):
        samples = vae.sample(4000, cond, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(samples.mean(0), x.mean(0), atol=0.25), step
        assert torch.allclose(top_eigenvalues(samples), eigenvalues, rtol=0.3), (step, top_eigenvalues(samples))
        with torch.no_grad():  # another decoder: its mean moved, its spread and directions changed
            last = vae.decoder.body[-1]
            last.weight.copy_(0.5 * last.weight[torch.randperm(last.weight.shape[0], generator=g)])
            last.bias.add_(2.0)


def test_a_generator_of_several_classes_finds_each_class_from_its_prompt():
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(3, 6, 8, generator=g)
    torch.manual_seed(SEED)
    vae = ConditionalVAE([4, 16], [[6, 8]], hidden_dim=32, latent_dim=4, cond_width=8, num_classes=3)
    vae.set_classes([prompts])
    unseen = torch.randn(1, 6, 8, generator=g)
    assert vae.calibration.rows([torch.cat([prompts[[2, 0, 1]], unseen])]).tolist() == [2, 0, 1, -1]
    (a, _), (b, _) = low_rank_class(400, g, shift=5.0), low_rank_class(400, g, shift=-5.0)
    for i in range(0, 400, 40):  # classes 0 and 2 in every batch; class 1 never
        batch = torch.cat([a[i : i + 40], b[i : i + 40]])
        vae.calibrate(batch, [prompts[[0, 2]]], torch.tensor([0] * 40 + [1] * 40))
    assert vae.calibration.mass.tolist()[1] == 0
    gen = torch.Generator().manual_seed(1)
    assert torch.allclose(vae.sample(2000, [prompts[0:1]], generator=gen).mean(0), a.mean(0), atol=0.3)
    assert torch.allclose(vae.sample(2000, [prompts[2:3]], generator=gen).mean(0), b.mean(0), atol=0.3)
    # an unseen prompt: no class's mean, only the pooled within-class variance as diagonal noise
    pooled = torch.cat([a - a.mean(0), b - b.mean(0)]).var(0).mean()
    spread = vae.sample(2000, [unseen], generator=gen).var(0).mean()
    decoded = vae.reference_draws(vae.condition([unseen], torch.zeros(1, dtype=torch.long)), 2000).var(0).mean()
    assert abs(float(spread) - float(max(pooled, decoded))) < 0.2 * float(pooled)


def test_fedavg_averages_each_class_over_the_copies_that_saw_it():
    """A copy that never saw a class adds nothing to it, whatever its sample count; covariances are
    averaged as covariances (factors of opposite sign would cancel)."""
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(2, 6, 8, generator=g)
    torch.manual_seed(SEED)
    copies = [ConditionalVAE([4, 16], [[6, 8]], hidden_dim=32, latent_dim=4, cond_width=8, num_classes=2) for _ in "ab"]
    for vae in copies:
        vae.set_classes([prompts])
    x, _ = low_rank_class(400, g)
    first, second = x[:200], -x[200:]  # class 0 seen by both copies; its two halves spread alike
    for vae, data in zip(copies, (first, second)):
        for batch in data.split(50):
            vae.calibrate(batch, [prompts[0:1]], torch.zeros(len(batch), dtype=torch.long))
    other, _ = low_rank_class(100, g, shift=-3.0)
    copies[1].calibrate(other, [prompts[1:2]], torch.zeros(100, dtype=torch.long))  # class 1: the second copy only
    weighted_average([(copies[0], 100.0), (copies[1], 900.0)], copies)
    for vae in copies:
        cal = vae.calibration
        mean = cal.data_mean / cal.mass[:, None]
        expected0 = (first.flatten(1).mean(0) + second.flatten(1).mean(0)) / 2  # 200 samples each, any weights
        assert torch.allclose(mean[0], expected0, atol=0.1)
        assert torch.allclose(mean[1], other.flatten(1).mean(0), atol=1e-5)  # the first copy's zeros ignored
        covariance = cal.data_basis[0].T @ cal.data_basis[0] / cal.mass[0]
        true = (torch.cov(first.flatten(1).T) + torch.cov(second.flatten(1).T)) / 2
        top = torch.linalg.eigvalsh(covariance.double()).flip(0)[:3]
        assert torch.allclose(top, torch.linalg.eigvalsh(true.double()).flip(0)[:3], rtol=0.3), top
        assert cal.fresh.sum() == 0


def test_fedavg_of_many_copies_each_holding_one_class():
    """Ten copies, each calibrated on its own class only: every row of the average is its one copy's
    (the joined factors are mostly zero, which float32 eigendecompositions failed on)."""
    g = torch.Generator().manual_seed(0)
    copies = [SamplingCalibration((4, 16), rows=10, rank=4) for _ in range(10)]
    for row, cal in enumerate(copies):
        cal.update(torch.full((8,), row), torch.randn(8, 4, 16, generator=g))
    state = copies[0].average_state([(cal, 1.0) for cal in copies])
    for row, cal in enumerate(copies):
        mine = cal.data_basis[row].T @ cal.data_basis[row]
        averaged = state["data_basis"][row].T @ state["data_basis"][row]
        assert torch.allclose(averaged, mine, atol=1e-5)
        assert torch.allclose(state["data_mean"][row], cal.data_mean[row])


def test_statistics_pool_every_sample_whichever_client_came_last():
    """A class split between two clients that train one shared generator in turn, ten batches each: the
    stored mean, variance and top covariance are the whole class's (a moving average over batches would
    follow the last client's half)."""
    g = torch.Generator().manual_seed(SEED)
    x, _ = low_rank_class(48, g)
    x[24:] += 1.0  # the second client's half sits elsewhere
    cal = SamplingCalibration((4, 16), rows=1, rank=4)
    for half in (x[:24], x[24:]):
        for _ in range(10):
            cal.update(torch.zeros(24, dtype=torch.long), half)
    flat = x.flatten(1)
    torch.testing.assert_close(cal.data_mean[0] / cal.mass[0], flat.mean(0), rtol=0, atol=1e-4)
    torch.testing.assert_close(cal.data_var[0] / cal.mass[0], flat.var(0), rtol=0.05, atol=1e-3)
    covariance = cal.data_basis[0].T @ cal.data_basis[0] / cal.mass[0]
    top = torch.linalg.eigvalsh(covariance.double()).flip(0)[:3]
    assert torch.allclose(top, torch.linalg.eigvalsh(torch.cov(flat.T).double()).flip(0)[:3], rtol=0.05), top


def test_deferred_updates_pool_the_same_statistics_as_one_at_a_time():
    """A stacked step's calibration updates run batched over the calibrations (``deferred``): the pooled
    statistics equal updating each calibration on its own (bases as covariances: a direction's sign is
    arbitrary). An update whose batch spans several rows still goes through the regular path."""
    g = torch.Generator().manual_seed(3)
    shape = (2, 6)

    def calibrations():
        one_row = [SamplingCalibration(shape, rows=1, rank=3) for _ in range(3)]
        return one_row + [SamplingCalibration(shape, rows=2, rank=3)]

    batches = [[torch.randn(5, *shape, generator=g) * (k + 1) + k for k in range(4)] for _ in range(3)]
    rows = [torch.zeros(5, dtype=torch.long)] * 3 + [torch.tensor([0, 0, 1, 1, 1])]
    apart, together = calibrations(), calibrations()
    for step in batches:
        for calibration, r, data in zip(apart, rows, step):
            calibration.update(r, data)
        before = together[0].mass.clone()
        with SamplingCalibration.deferred():
            for calibration, r, data in zip(together, rows, step):
                calibration.update(r, data)
            assert torch.equal(together[0].mass, before)  # nothing pooled before the block ends
    for a, b in zip(apart, together):
        for name in ("mass", "fresh", "data_mean", "data_var"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-5)
        cov_a = a.data_basis.transpose(-1, -2) @ a.data_basis
        cov_b = b.data_basis.transpose(-1, -2) @ b.data_basis
        torch.testing.assert_close(cov_b, cov_a, rtol=1e-4, atol=1e-4)


def test_repeated_batches_are_pooled_once_with_the_statistics_of_pooling_each():
    """Within ``repeats`` (a visit's local epochs) a batch that comes again, in another order, is counted
    instead of pooled: nothing is pooled until a different batch comes, the statistics are read or the
    block ends, and then mass, mean, variance and covariance equal pooling every copy. A batch that
    differs in one value is a new batch. Batched (``deferred``) and plain updates alike."""
    g = torch.Generator().manual_seed(SEED)
    shape, directions = (2, 6), torch.randn(4, 12, generator=g)

    def batch(n, offset):  # samples in a 4-dimensional subspace: no truncation, bases comparable exactly
        return ((torch.randn(n, 4, generator=g) + offset) @ directions).view(n, *shape)

    first, a, b = batch(5, 0.0), batch(5, 1.0), batch(6, -1.0)
    a[:, 0, 0] = 0.25  # a feature that every sample shares must not keep repeats from being recognised
    edited = a.clone()
    edited[2, 1, 3] += 0.5
    sequence = [a, a[[3, 1, 4, 0, 2]], a[[4, 3, 2, 1, 0]], edited, b, b.flip(0), a]
    zeros = lambda x: torch.zeros(x.shape[0], dtype=torch.long)  # noqa: E731

    def calibrations():
        cals = [SamplingCalibration(shape, rows=1, rank=8) for _ in range(2)] + [SamplingCalibration(shape, 2, 8)]
        for cal in cals:
            cal.update(zeros(first), first)
        return cals

    def step(cal, data, deferred):
        rows = zeros(data) if cal.mass.shape[0] == 1 else data.flatten(1)[:, 0].gt(0).long()
        if deferred:
            with SamplingCalibration.deferred():
                cal.update(rows, data)
        else:
            cal.update(rows, data)

    def assert_same(cal, ref):
        for name in ("mass", "fresh", "data_mean", "data_var"):
            torch.testing.assert_close(getattr(cal, name), getattr(ref, name), rtol=1e-5, atol=1e-5, msg=name)
        cov, cov_ref = (c.data_basis.transpose(-1, -2) @ c.data_basis for c in (cal, ref))
        torch.testing.assert_close(cov, cov_ref, rtol=1e-4, atol=1e-4)

    reference, held = calibrations(), calibrations()
    for data in sequence:
        for k, cal in enumerate(reference):
            step(cal, data, deferred=k == 0)
    with SamplingCalibration.repeats():
        for data in sequence[:3]:
            for k, cal in enumerate(held):
                step(cal, data, deferred=k == 0)
        assert all(float(cal.mass.sum()) == 5 for cal in held)  # three copies of a, held, nothing pooled yet
        state = held[1].state_dict()  # a read pools the held batch first
        assert float(state["mass"].sum()) == 20
        for data in sequence[3:]:
            for k, cal in enumerate(held):
                step(cal, data, deferred=k == 0)
    for cal, ref in zip(held, reference):
        assert cal._held is None
        assert_same(cal, ref)


def test_a_visits_local_epochs_pool_each_class_once(monkeypatch):
    """A per-class run where every class fits one batch: each visit pools a generator's batch once for all
    its local epochs, in one batched update of the visit's generators, counted once per epoch (each
    class's mass is every sample-epoch it trained on)."""

    class VisitSamples(Callback):
        def __init__(self):
            self.samples = {}

        def on_client_end(self, trainer, module, visit):
            for key, values in visit.stats.items():
                self.samples[key] = self.samples.get(key, 0.0) + values["samples"]

    pooled, update_rows = [], calibration_module.update_rows
    monkeypatch.setattr(
        calibration_module, "update_rows", lambda entries: (pooled.append(entries), update_rows(entries))
    )
    dm = small_datamodule(CLIENTS, batch_size=64)
    module, seen = module_for(PerClassGenerator, dm), VisitSamples()
    trainer = federated_fit(module, dm, callbacks=[seen], max_rounds=2, local_epochs=3)
    assert len(pooled) == trainer.fit_loop.visits  # one batched update per visit, not one per local epoch
    assert all(count == 3 for entries in pooled for *_, count in entries)
    masses = {key: float(module.bank[key].net.calibration.mass.sum()) for key in seen.samples}
    assert masses == seen.samples
