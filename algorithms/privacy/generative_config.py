"""The settings of the DP generative models (`GenerativeConfig`: every generative flag)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from algorithms import presets
from algorithms.evaluation.heads import HeadConfig
from models.cvae import CVAE_LOSSES
from utils.cli import flag, flag_name, same_flag

SYNTHETIC_LABELS = ("match", "uniform", "balanced")


def _preset_help() -> str:
    """--preset's help: every preset file's description and the flags it sets."""
    listed = []
    for name in presets.names():
        values = ", ".join(f"--{k} {v}" for k, v in presets.flags(name).items())
        listed.append(
            f"{name} ({presets.load(name)['description']}{': ' if values else ''}{values})"
        )
    return (
        f"the defaults of other flags, from algorithms/presets/<name>.toml: {'; '.join(listed)}. "
        "A flag given explicitly overrides its preset value. Default: {default}"
    )


@dataclass(frozen=True)
class GenerativeConfig:
    """Paper defaults: 50 rounds x 5 local epochs, batch 256, CVAE Adam lr 1e-3 and beta 0.1,
    CGAN Adam lr 2e-4 with betas (0.5, 0.999), latent 100, as many samples per class as real.

    `batch_size` 0: the whole client in every step (sampling rate 1). `cvae_lr` None: the CVAE
    trains with `lr`, as in the paper. `preset` names the defaults the flags started from
    (algorithms/presets/); the other fields hold the values actually used. Flag names as in the
    paper's scripts; the CVAE's beta, latent scale and width are the paper's, the rest is ours."""

    n_rounds: int = field(
        default=50,
        metadata=flag(
            "--n_fedavg_rounds",
            section="generative",
            help="communication rounds of the generative model. Default: {default}",
        ),
    )
    local_epochs: int = field(
        default=5,
        metadata=flag(
            "--local_epochs_gen",
            section="generative",
            help="local epochs per round. Default: {default}",
        ),
    )
    batch_size: int = field(
        default=256,
        metadata=flag(
            "--gen_batch_size",
            section="generative",
            help="nominal batch size B (0: the whole client in every step); under DP, batches "
            "are Poisson sampled at rate 1/ceil(n/B). Default: {default}",
        ),
    )
    lr: float = field(default=1e-3, metadata=same_flag(HeadConfig, "lr"))
    gan_lr: float = field(
        default=2e-4,
        metadata=flag(
            "--gan_lr",
            section="cgan",
            help="Adam learning rate of the CGAN (betas 0.5, 0.999). Default: {default}",
        ),
    )
    beta: float = field(
        default=0.1,
        metadata=flag(
            "--cvae_beta",
            section="cvae",
            help="weight of the KL term of the CVAE loss. Default: {default}",
        ),
    )
    latent_var: float = field(
        default=1.0,
        metadata=flag(
            "--cvae_var",
            section="cvae",
            help="scale of the latent draw when sampling, z = var * N(0, I), as in the paper's "
            "code. Default: {default}",
        ),
    )
    hidden_dim: int = field(
        default=256,
        metadata=flag(
            "--hidden_dim", section="cvae", help="hidden width of the CVAE. Default: {default}"
        ),
    )
    latent_dim: int = field(
        default=100,
        metadata=flag(
            "--latent_dim",
            section="generative",
            help="latent size of the CVAE and of the CGAN. Default: {default}",
        ),
    )
    generated_factor: float = field(
        default=1.0,
        metadata=flag(
            "--generated_factor",
            section="synthesis",
            help="synthetic samples per real training sample. Default: {default}",
        ),
    )
    synthetic_labels: str = field(
        default="match",
        metadata=flag(
            "--synthetic_labels",
            section="synthesis",
            choices=SYNTHETIC_LABELS,
            help="match: per class as many samples as the client holds (the paper); uniform: "
            "the same total spread evenly over all classes; balanced: spread evenly over the "
            "classes the client holds. Default: {default}",
        ),
    )
    squash_temperature: float = field(
        default=2.0,
        metadata=flag(
            "--squash_temperature",
            section="synthesis",
            help="t of the fixed squash sigmoid(u / t) that maps per-record standardized "
            "embeddings into (0, 1) for the sigmoid decoders (and where fidelity is measured). "
            "Default: {default}",
        ),
    )
    cvae_loss: str = field(
        default="paper",
        metadata=flag(
            "--cvae_loss",
            section="cvae",
            choices=("paper", "elbo"),
            help="paper: MSE averaged over dimensions + beta x B x KL per sample (the paper's "
            "scaling; its KL weight collapses the posterior); elbo: the negative ELBO of a "
            "Gaussian likelihood with std --cvae_obs_std, summed over dimensions, + beta x KL. "
            "Default: {default}",
        ),
    )
    obs_std: float = field(
        default=0.125,
        metadata=flag(
            "--cvae_obs_std",
            section="cvae",
            help="std of the Gaussian likelihood of --cvae_loss elbo, in the squashed space. "
            "Default: {default}",
        ),
    )
    cvae_layers: int = field(
        default=3,
        metadata=flag(
            "--cvae_layers",
            section="cvae",
            help="hidden layers of the encoder and of the decoder (0: linear maps). "
            "Default: {default}",
        ),
    )
    encoder_scale: float = field(
        default=1.0,
        metadata=flag(
            "--cvae_encoder_scale",
            section="cvae",
            help="fixed factor on the embedding before the encoder; a small one leaves DP-SGD's "
            "clipping norm to the decoder (the shared part). Default: {default}",
        ),
    )
    cvae_lr: float | None = field(
        default=None,
        metadata=flag(
            "--cvae_lr",
            section="cvae",
            type=float,
            help="Adam learning rate of the CVAE. Default: "
            f"{flag_name(HeadConfig, 'lr')}'s, as the paper",
        ),
    )
    preset: str = field(
        default=presets.DEFAULT,
        metadata=flag(
            "--preset", section="generative", choices=presets.names(), help=_preset_help()
        ),
    )

    @property
    def cvae_learning_rate(self) -> float:
        return self.lr if self.cvae_lr is None else self.cvae_lr

    def __post_init__(self) -> None:
        name = functools.partial(flag_name, self)
        checks = [
            (self.n_rounds >= 1, f"{name('n_rounds')} must be >= 1, got {self.n_rounds}"),
            (
                self.local_epochs >= 1,
                f"{name('local_epochs')} must be >= 1, got {self.local_epochs}",
            ),
            (
                self.batch_size >= 0,
                f"{name('batch_size')} must be >= 0 (0: the whole client), got {self.batch_size}",
            ),
            (self.lr > 0, f"{name('lr')} must be > 0, got {self.lr}"),
            (self.gan_lr > 0, f"{name('gan_lr')} must be > 0, got {self.gan_lr}"),
            (self.beta >= 0, f"{name('beta')} must be >= 0, got {self.beta}"),
            (self.latent_var > 0, f"{name('latent_var')} must be > 0, got {self.latent_var}"),
            (self.hidden_dim >= 1, f"{name('hidden_dim')} must be >= 1, got {self.hidden_dim}"),
            (self.latent_dim >= 1, f"{name('latent_dim')} must be >= 1, got {self.latent_dim}"),
            (
                self.generated_factor > 0,
                f"{name('generated_factor')} must be > 0, got {self.generated_factor}",
            ),
            (
                self.synthetic_labels in SYNTHETIC_LABELS,
                f"{name('synthetic_labels')} must be one of {SYNTHETIC_LABELS}, "
                f"got {self.synthetic_labels!r}",
            ),
            (
                self.squash_temperature > 0,
                f"{name('squash_temperature')} must be > 0, got {self.squash_temperature}",
            ),
            (
                self.cvae_loss in CVAE_LOSSES,
                f"{name('cvae_loss')} must be one of {CVAE_LOSSES}, got {self.cvae_loss!r}",
            ),
            (self.obs_std > 0, f"{name('obs_std')} must be > 0, got {self.obs_std}"),
            (self.cvae_layers >= 0, f"{name('cvae_layers')} must be >= 0, got {self.cvae_layers}"),
            (
                self.encoder_scale > 0,
                f"{name('encoder_scale')} must be > 0, got {self.encoder_scale}",
            ),
            (
                self.cvae_lr is None or self.cvae_lr > 0,
                f"{name('cvae_lr')} must be > 0, got {self.cvae_lr}",
            ),
            (
                self.preset in presets.names(),
                f"{name('preset')} must be one of {presets.names()}, got {self.preset!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
