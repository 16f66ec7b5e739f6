import torch

from a2vgen.nn import ConditionalVAE, ConditionEncoder, VAELossSchedule


def test_per_sample_conditioning_permutes_with_the_batch():
    torch.manual_seed(0)
    vae = ConditionalVAE([4, 16], [[6, 8]], hidden_dim=32, latent_dim=8, cond_width=8)
    cond = torch.randn(5, 6, 8)
    z = torch.randn(5, 8)
    out = vae.decode(z, vae.condition([cond]))
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = vae.decode(z, vae.condition([cond[perm]]))
    # each output follows its own sample's conditioning: permuting both permutes the outputs
    torch.testing.assert_close(vae.decode(z[perm], vae.condition([cond[perm]])), out[perm])
    assert not torch.allclose(permuted, out)


def test_distinct_condition_rows_picked_per_sample_equal_per_sample_conditioning():
    torch.manual_seed(0)
    vae = ConditionalVAE([4, 16], [[6, 8]], hidden_dim=32, latent_dim=8, cond_width=8)
    rows, index = torch.randn(3, 6, 8), torch.tensor([2, 0, 0, 1, 2])
    torch.testing.assert_close(vae.condition([rows], index), vae.condition([rows[index]]))
    x, eps = torch.randn(5, 4, 16), torch.randn(5, 8)
    torch.testing.assert_close(vae(x, [rows], eps=eps, cond_index=index).recon, vae(x, [rows[index]], eps=eps).recon)


def test_flux_conditioning_any_length_and_a_pooled_vector():
    enc = ConditionEncoder([[512, 4096], [768]], width=16)
    a = enc([torch.randn(2, 512, 4096), torch.randn(2, 768)])
    b = ConditionEncoder([[77, 768]], width=16)([torch.randn(2, 77, 768)])
    assert a.shape == b.shape == (2, 16)
    # the projection keeps the T5 branch small: 4096*16 weights, not 512*4096*16
    assert sum(p.numel() for p in enc.parameters()) < 4096 * 16 + 768 * 16 + 2000


def test_unconditioned_variant_ignores_conditioning():
    vae = ConditionalVAE([4, 16], [], hidden_dim=32, latent_dim=8)
    assert not vae.conditional
    assert vae.sample(3).shape == (3, 4, 16)


def test_generator_reconstructs_values_around_twenty():
    """No output squashing: a generator fits embeddings whose values reach about ±20."""
    torch.manual_seed(0)
    x = torch.randn(16, 4, 16) * 8
    x[:, :, 0] = 20.0
    x[:, :, 1] = -20.0
    cond = [torch.randn(16, 6, 8)]
    vae = ConditionalVAE([4, 16], [[6, 8]], hidden_dim=128, latent_dim=16, cond_width=8)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(400):
        recon, mu, logvar, *_ = vae(x, cond, eps=torch.zeros(16, 16))
        loss = (recon - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    recon = vae(x, cond, eps=torch.zeros(16, 16)).recon
    assert recon[:, :, 0].mean() > 18 and recon[:, :, 1].mean() < -18
    assert (recon - x).abs().mean() < 1.0


def test_schedule_follows_age():
    s = VAELossSchedule(
        beta_max=0.01, beta_warmup_epochs=5, sim_weight_start=0.1, sim_weight_end=0.01, sim_decay_epochs=10
    )
    ages = torch.tensor([0, 1, 5, 50])
    torch.testing.assert_close(s.beta(ages), torch.tensor([0.0, 0.002, 0.01, 0.01]))
    torch.testing.assert_close(s.sim_weight(torch.tensor([0, 5, 10, 20])), torch.tensor([0.1, 0.055, 0.01, 0.01]))
