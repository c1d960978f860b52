"""What DP-CVAE and DP-CGAN clients share: their settings, their data in model space, their
random streams, and the DP-SGD engine of the network that sees the data.

Data: per-record standardized embeddings, squashed into (0, 1) by a fixed logistic (see
data/features.py): no statistic of private data is used for normalization.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from algorithms import presets
from algorithms.evaluation.heads import HeadConfig
from algorithms.privacy.accounting import (
    calibrate_noise,
    calibration_key,
    sample_rate_for,
    steps_per_epoch,
)
from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_sgd import PrivateTraining, make_private, poisson_batch
from algorithms.privacy.noise import noisy_count
from data.clients import ClientData
from data.features import squash
from models.cvae import CVAE_LOSSES
from utils.cli import flag, flag_name, same_flag
from utils.seeding import BATCHES, COUNT, DP_NOISE, LATENT, new_secret, private_generator

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
            help="Adam learning rate of the CVAE. Default: --lr, as the paper",
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


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused kernel: the same update as the per-tensor loop (up to rounding),
    about 3x faster on CPU for these models (a tenth of a DP step)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


class DPClient:
    """The base of DP-CVAE and DP-CGAN clients: data in model space, RNGs, the private engine.

    A subclass trains its networks (`fit`, `train_epochs`), samples from released weights
    (`sample`), and says what it shares (`released_weights`, `initial_weights`).

    Private randomness (noise, batches, the noisy count, latent draws, synthetic sampling) comes
    from `private_generator`: seeded by `seed` (`dp.noise_source` seeded), or keyed by `secret`
    (secure: 32 bytes of OS entropy, drawn here unless given; a Flower site keeps its own and
    passes it again at every message). Model initialization stays seeded (public)."""

    # How DP-SGD clips (see algorithms.privacy.GRAD_SAMPLE_MODES); the others are references.
    grad_sample_mode = "fast"

    def __init__(
        self,
        data: ClientData,
        n_classes: int,
        cfg: GenerativeConfig,
        dp: DPConfig,
        seed: int,
        secret: bytes | None = None,
        device: str = "cpu",
    ):
        self.id, self.cfg, self.dp, self.n_classes = data.id, cfg, dp, n_classes
        self.device = torch.device(device)
        x = torch.as_tensor(squash(data.x_train, cfg.squash_temperature))
        self.x = x.to(self.device)
        self.y = torch.as_tensor(data.y_train, dtype=torch.int64).to(self.device)
        self.onehot = F.one_hot(self.y, n_classes).float()
        self.n = len(self.y)  # stays here; under DP only the noisy count leaves
        self.secret = (secret or new_secret()) if dp.noise_source == "secure" else None

        def stream(name: str, device: torch.device = self.device) -> torch.Generator:
            # every private stream of the client, on its device, made here and only here
            return private_generator(seed, name, secret=self.secret, device=device)

        # the released count: everything that would depend on n in the clear uses it
        self.n_released = (
            noisy_count(self.n, dp.count_noise, stream(COUNT, torch.device("cpu")))
            if dp.enabled
            else self.n
        )
        # the nominal batch size B (0: the whole client, one step per epoch)
        self.batch_size = cfg.batch_size or self.n_released
        self.steps_epoch = steps_per_epoch(self.n_released, self.batch_size)
        self.total_steps = cfg.n_rounds * cfg.local_epochs * self.steps_epoch
        self.rng_batches = stream(BATCHES)
        self.rng_noise = stream(DP_NOISE)
        self.rng_latent = stream(LATENT)
        self.private: PrivateTraining | None = None
        # (calibration key, noise multiplier) under DP: what a Flower site keeps between messages
        self.calibration: tuple[str, float] | None = None
        self._build(seed)

    def _build(self, seed: int) -> None:
        """The method's models and optimizers (seeded from the client seed), made private."""
        raise NotImplementedError

    def _make_private(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not self.dp.enabled:
            return
        rate = sample_rate_for(self.n_released, self.batch_size)
        sigma = calibrate_noise(self.dp, rate, self.total_steps, self.steps_epoch)
        self.calibration = (
            calibration_key(self.dp, rate, self.total_steps, self.steps_epoch),
            sigma,
        )
        self.private = make_private(
            model,
            optimizer,
            self.n_released,
            self.batch_size,
            self.dp,
            sigma,
            self.rng_noise,
            grad_sample_mode=self.grad_sample_mode,
            count_history=self.dp.count_history(),
        )

    def _batches(self):
        """Index batches of one local epoch: Poisson sampled under DP, shuffled otherwise."""
        if self.private is not None:
            for _ in range(self.steps_epoch):
                yield poisson_batch(self.n, self.private.sample_rate, self.rng_batches)
        else:
            order = torch.randperm(self.n, generator=self.rng_batches, device=self.device)
            yield from order.split(self.batch_size)

    def can_sample(self, weights: dict[str, torch.Tensor]) -> np.ndarray:
        """Per class, whether the global model can sample it: always (it takes any label)."""
        return np.ones(self.n_classes, dtype=bool)

    def _release_gradients(self, *optimizers: torch.optim.Optimizer) -> None:
        """Drop the gradients (and Opacus's summed gradients) after local training: nothing
        reads them between rounds, and ten clients' copies would cost memory."""
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _metrics(self, losses: list[float]) -> dict[str, float]:
        out = {"train_loss": float(np.mean(losses)) if losses else float("nan")}
        if self.private is not None:
            out["epsilon"] = self.private.epsilon(self.dp.delta)
        return out

    def privacy(self) -> dict:
        """This client's line of the privacy report, read from its accountant."""
        if self.private is None:
            return {"id": self.id, "noise_source": self.dp.noise_source, "epsilon": None}
        return {
            "id": self.id,
            "noise_source": self.dp.noise_source,
            "n_released": self.n_released,
            "sample_rate": self.private.sample_rate,
            "steps": self.private.steps(),
            "noise_multiplier": self.private.noise_multiplier,
            "epsilon": self.private.epsilon(self.dp.delta),
            "accountant_history": [list(h) for h in self.private.engine.accountant.history],
        }

    def _rng_state(self) -> dict:
        return {
            "batches": self.rng_batches.get_state(),
            "noise": self.rng_noise.get_state(),
            "latent": self.rng_latent.get_state(),
            "n_released": self.n_released,
            "accountant": [list(h) for h in self.private.engine.accountant.history]
            if self.private
            else [],
        }

    def _load_rng_state(self, state: dict) -> None:
        if state.get("n_released", self.n_released) != self.n_released:
            raise ValueError(
                f"client {self.id}: the stored state released another record count "
                f"({state['n_released']}, now {self.n_released}): secure noise needs the same "
                "secret key as the run that stored it"
            )
        self.rng_batches.set_state(state["batches"])
        self.rng_noise.set_state(state["noise"])
        self.rng_latent.set_state(state["latent"])
        if self.private is not None:
            self.private.engine.accountant.history = [tuple(h) for h in state["accountant"]]
