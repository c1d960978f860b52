"""The CVAE's options: the paper's loss and the ELBO, the linear (n_layers 0) model, the
encoder's input scale."""

import pytest
import torch
import torch.nn.functional as F

from models.cvae import CVAE, cvae_loss_per_sample, kl_per_sample


def _batch(n: int = 7, dim: int = 5, n_classes: int = 3, latent: int = 2):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, dim, generator=g)
    onehot = F.one_hot(torch.randint(0, n_classes, (n,), generator=g), n_classes).float()
    eps = torch.randn(n, latent, generator=g)
    return x, onehot, eps


def test_the_paper_loss_averaged_over_the_batch_is_the_papers_batch_loss():
    x, onehot, eps = _batch()
    model = CVAE(input_dim=5, n_classes=3, hidden_dim=4, latent_dim=2)
    recon, mu, logvar = model(x, onehot, eps)
    per_sample = cvae_loss_per_sample(
        x=x, recon=recon, mu=mu, logvar=logvar, beta=0.1, batch_size=7
    )
    # the paper: MSE averaged over batch and dimensions + beta x KL summed over the batch
    kl_sum = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    paper = F.mse_loss(recon, x) + 0.1 * kl_sum
    torch.testing.assert_close(per_sample.mean(), paper)


def test_the_elbo_sums_the_gaussian_log_likelihood_over_dimensions_and_weighs_kl_by_beta():
    x, onehot, eps = _batch()
    model = CVAE(input_dim=5, n_classes=3, hidden_dim=4, latent_dim=2)
    recon, mu, logvar = model(x, onehot, eps)
    s = 0.2
    elbo = cvae_loss_per_sample(
        x=x, recon=recon, mu=mu, logvar=logvar, beta=1.0, batch_size=7, loss="elbo", obs_std=s
    )
    # -log N(x; recon, s^2 I) without its constant, plus the KL of each sample
    nll = torch.distributions.Normal(recon, s).log_prob(x).sum(1).neg()
    const = 5 * torch.log(torch.tensor(s * (2 * torch.pi) ** 0.5))
    torch.testing.assert_close(elbo, nll - const + kl_per_sample(mu, logvar))
    half = cvae_loss_per_sample(
        x=x, recon=recon, mu=mu, logvar=logvar, beta=0.5, batch_size=7, loss="elbo", obs_std=s
    )
    torch.testing.assert_close(elbo - half, 0.5 * kl_per_sample(mu, logvar))


def test_an_unknown_loss_is_refused_by_name():
    x, onehot, eps = _batch()
    recon, mu, logvar = CVAE(input_dim=5, n_classes=3, hidden_dim=4, latent_dim=2)(x, onehot, eps)
    with pytest.raises(ValueError, match=r"the CVAE loss must be one of .*got 'mse'"):
        cvae_loss_per_sample(
            x=x, recon=recon, mu=mu, logvar=logvar, beta=1.0, batch_size=7, loss="mse"
        )


def test_zero_layers_give_a_linear_encoder_and_decoder():
    model = CVAE(input_dim=5, n_classes=3, hidden_dim=64, latent_dim=2, n_layers=0)
    decoder = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in decoder] == [(2 + 3, 5)]
    assert sum(p.numel() for p in model.decoder.parameters()) == (2 + 3) * 5 + 5
    assert model.mu.in_features == 5 + 3
    x, onehot, eps = _batch()
    recon, mu, _ = model(x, onehot, eps)
    assert recon.shape == x.shape and mu.shape == (7, 2)
    assert ((recon > 0) & (recon < 1)).all()  # the sigmoid output stays


def test_the_paper_depth_keeps_its_module_layout():
    model = CVAE(input_dim=5, n_classes=3, hidden_dim=4, latent_dim=2)
    linears = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 4), (4, 4), (4, 4), (4, 5)]
    assert sorted(model.decoder.state_dict()) == [
        f"{i}.{k}" for i in (0, 2, 4, 6) for k in ("bias", "weight")
    ]


def test_the_encoder_scale_multiplies_the_embedding_before_the_encoder_only():
    x, onehot, eps = _batch()
    torch.manual_seed(1)
    scaled = CVAE(input_dim=5, n_classes=3, hidden_dim=4, latent_dim=2, encoder_scale=0.03)
    plain = CVAE(input_dim=5, n_classes=3, hidden_dim=4, latent_dim=2)
    plain.load_state_dict(scaled.state_dict())
    mu_s, logvar_s = scaled.encode(x, onehot)
    mu_p, logvar_p = plain.encode(0.03 * x, onehot)
    torch.testing.assert_close(mu_s, mu_p)
    torch.testing.assert_close(logvar_s, logvar_p)
    z = torch.randn(7, 2)
    torch.testing.assert_close(scaled.decode(z, onehot), plain.decode(z, onehot))
