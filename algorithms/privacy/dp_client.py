"""DP-SGD clients: `DPSGDClient`, what any DP-SGD client needs (private streams, the noisy
count, the Poisson rate and steps of its schedule, the calibration for the whole run, the
engine, its privacy line), and `DPClient`, the base of DP-CVAE and DP-CGAN clients (their data
in model space, a latent stream; their settings are in generative_config.py).

Data: per-record standardized embeddings, squashed into (0, 1) by a fixed logistic (see
data/features.py): no statistic of private data is used for normalization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from algorithms.federation.rounds import ClientUpdate
from algorithms.privacy.accounting import (
    calibrate_noise,
    calibration_key,
    sample_rate_for,
    steps_per_epoch,
)
from algorithms.privacy.config import DPConfig, privacy_unit
from algorithms.privacy.dp_sgd import (
    PrivateTraining,
    make_private,
    patient_poisson_batch,
    poisson_batch,
)
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.noise import noisy_count
from algorithms.privacy.secure_aggregation import SecurePlan
from algorithms.privacy.secure_dpsgd import (
    check_schedule,
    count_rdp,
    secure_dp_step,
    secure_privacy,
    secure_update,
)
from data.clients import ClientData
from data.features import squash
from utils.seeding import BATCHES, COUNT, DP_NOISE, LATENT, new_secret, private_generator

if TYPE_CHECKING:
    from algorithms.federation.aggregation import StateDict


def adam(
    params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Adam:
    """Adam with the fused kernel: the same update as the per-tensor loop (up to rounding),
    about 3x faster on CPU for these models (a tenth of a DP step)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


@dataclass(frozen=True)
class Schedule:
    """What a DP-SGD client's calibration needs of its training: rounds, local epochs per round,
    and the nominal batch size in privacy units (0: the whole client, one step per epoch)."""

    n_rounds: int
    local_epochs: int
    batch_size: int


class DPSGDClient:
    """A client trained with DP-SGD for a whole run (any method): its training data, private
    streams, released count, schedule, and the engine calibrated for every step of the run.

    A subclass builds its model and optimizer and calls `_make_private` on them, trains on
    `_batches()` with `dp_step`, and releases `n_released` as its FedAvg weight.

    Private randomness (noise, batches, the noisy count, a subclass's own streams) comes from
    `private_generator` (`stream`): seeded by `seed` (`dp.noise_source` seeded), or keyed by
    `secret` (secure: 32 bytes of OS entropy, drawn here unless given; a Flower site keeps its
    own and passes it again at every message). Model initialization stays seeded (public)."""

    # How DP-SGD clips (see algorithms.privacy.dp_sgd.GRAD_SAMPLE_MODES); the others are references.
    grad_sample_mode = "fast"
    # Privacy units the client's DP step supports: record, and patient (user-level DP-SGD)
    units: tuple[str, ...] = ("record", "patient")
    # Whether it has a secure-aggregation round (`_secure_round`)
    secure = False

    def __init__(
        self,
        *,
        data: ClientData,
        x: np.ndarray,
        n_classes: int,
        schedule: Schedule,
        dp: DPConfig,
        seed: int,
        secret: bytes | None = None,
        device: str = "cpu",
        plan: SecurePlan | None = None,
    ):
        """A client of `data` whose training inputs are `x` (its train rows, in model space).

        Args:
            data: the client's data (labels, patient ids).
            x: the training inputs the model sees, one row per training record.
            n_classes: the number of classes.
            schedule: rounds, local epochs and nominal batch size (the calibration's steps).
            dp: the DP settings.
            seed: the client seed.
            secret: the key of its private draws (None: drawn here when the noise is secure).
            device: where its tensors and generators live.
            plan: the public plan of its secure releases (None: no secure aggregation).
        """
        self.id, self.dp, self.n_classes, self.seed = data.id, dp, n_classes, seed
        self.plan = plan
        self.secure_steps = 0  # releases made under secure aggregation
        self.device = torch.device(device)
        self.x = torch.as_tensor(x).to(self.device)
        self.y = torch.as_tensor(data.y_train, dtype=torch.int64).to(self.device)
        self.onehot = F.one_hot(self.y, n_classes).float()
        self.n = len(self.y)  # stays here; under DP only the noisy count leaves
        self.unit = privacy_unit(dp, type(self), data.patients_train is not None)
        # each training record's patient, 0..P-1, at the patient unit
        self.patients: torch.Tensor | None = None
        # the current batch's patients (dp_sgd.patient_poisson_batch)
        self.groups: torch.Tensor | None = None
        if self.unit == "patient" and data.patients_train is not None:  # privacy_unit: ids
            local = np.unique(data.patients_train, return_inverse=True)[1]
            self.patients = torch.as_tensor(local, dtype=torch.int64).to(self.device)
        # what DP protects and counts: records, or patients (each with all its records)
        n_units = self.n if self.patients is None else int(self.patients.max()) + 1
        self.n_units = n_units
        self.secret = (secret or new_secret()) if dp.noise_source == "secure" else None
        # the released count: everything that would depend on n in the clear uses it
        self.n_released = (
            noisy_count(n_units, dp.count_noise, self.stream(COUNT, torch.device("cpu")))
            if dp.enabled
            else self.n
        )
        # the nominal batch size B, in units (0: the whole client, one step per epoch)
        self.batch_size = schedule.batch_size or self.n_released
        self.steps_epoch = steps_per_epoch(self.n_released, self.batch_size)
        self.total_steps = schedule.n_rounds * schedule.local_epochs * self.steps_epoch
        self.rng_batches = self.stream(BATCHES)
        self.rng_noise = self.stream(DP_NOISE)
        # the secure releases' draws (CPU; the same stream as the DP noise, which they replace)
        cpu = self.device.type == "cpu"
        self.rng_secure = self.rng_noise if cpu else self.stream(DP_NOISE, torch.device("cpu"))
        if plan is not None:
            check_schedule(schedule.local_epochs * self.steps_epoch, "this schedule")
        self.dp_sgd: PrivateTraining | None = None
        # (calibration key, noise multiplier) under DP: what a Flower site keeps between messages
        self.calibration: tuple[str, float] | None = None

    def stream(self, name: str, device: torch.device | None = None) -> torch.Generator:
        """The client's private stream `name` (on its device unless given): every private draw
        of the client comes from one made here."""
        return private_generator(self.seed, name, secret=self.secret, device=device or self.device)

    def _make_private(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not self.dp.enabled:
            return
        rate = sample_rate_for(self.n_released, self.batch_size)
        sigma = calibrate_noise(self.dp, rate, self.total_steps, self.steps_epoch)
        self.calibration = (
            calibration_key(self.dp, rate, self.total_steps, self.steps_epoch),
            sigma,
        )
        self.dp_sgd = make_private(
            model=model,
            optimizer=optimizer,
            n=self.n_released,
            batch_size=self.batch_size,
            cfg=self.dp,
            noise_multiplier=sigma,
            noise_generator=self.rng_noise,
            grad_sample_mode=self.grad_sample_mode,
            count_history=self.dp.count_history(),
        )

    def _batches(self) -> Iterator[torch.Tensor]:
        """Index batches of one local epoch: Poisson sampled under DP, shuffled otherwise."""
        if self.dp_sgd is not None and self.patients is not None:
            # user-level DP-SGD: patients Poisson sampled, each with all its records
            for _ in range(self.steps_epoch):
                index, self.groups = patient_poisson_batch(
                    self.patients, self.n_units, self.dp_sgd.sample_rate, self.rng_batches
                )
                yield index
        elif self.dp_sgd is not None:
            for _ in range(self.steps_epoch):
                yield poisson_batch(self.n, self.dp_sgd.sample_rate, self.rng_batches)
        else:
            order = torch.randperm(self.n, generator=self.rng_batches, device=self.device)
            yield from order.split(self.batch_size)

    def _release_gradients(self, *optimizers: torch.optim.Optimizer) -> None:
        """Drop the gradients (and Opacus's summed gradients) after local training: nothing
        reads them between rounds, and ten clients' copies would cost memory."""
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _metrics(self, losses: list[float]) -> dict[str, float]:
        out = {"train_loss": float(np.mean(losses)) if losses else float("nan")}
        if self.plan is not None:
            out["epsilon"] = self.privacy()["epsilon"]
        elif self.dp_sgd is not None:
            out["epsilon"] = self.dp_sgd.epsilon(self.dp.delta)
        return out

    def _secure_round(
        self,
        loss: Callable[[torch.Tensor], torch.Tensor],
        shared: list[torch.nn.Parameter],
        rnd: int,
    ) -> ClientUpdate:
        """One round under secure aggregation: the one full batch, `secure_dp_step` (the shared
        parameters in the coordinator's order), this site's residues and released count."""
        if self.dp_sgd is None or self.plan is None:
            raise RuntimeError(f"client {self.id}: secure rounds need DP and a secure plan")
        idx = next(iter(self._batches()))
        losses = loss(idx) if len(idx) else None
        residues = secure_dp_step(
            state=self.dp_sgd,
            loss_per_sample=losses,
            groups=self.groups,
            plan=self.plan,
            shared=shared,
            step=rnd,
            generator=self.rng_secure,
        )
        self.secure_steps += 1
        done = [] if losses is None else [float(losses.detach().mean())]
        return ClientUpdate(secure_update(residues, rnd), self.n_released, self._metrics(done))

    def privacy(self) -> dict:
        """This client's line of the privacy report, read from its accountant."""
        if self.dp_sgd is None:
            return {"id": self.id, "noise_source": self.dp.noise_source, "epsilon": None}
        unit = {} if self.patients is None else {"unit": "patient"}
        if self.plan is not None:
            return {
                "id": self.id,
                **unit,
                "noise_source": self.dp.noise_source,
                "n_released": self.n_released,
                "sample_rate": self.dp_sgd.sample_rate,
                **secure_privacy(
                    self.plan, self.secure_steps, self.dp.delta, count_rdp(self.dp.count_noise)
                ),
            }
        return {
            "id": self.id,
            **unit,
            "noise_source": self.dp.noise_source,
            "n_released": self.n_released,
            "sample_rate": self.dp_sgd.sample_rate,
            "steps": self.dp_sgd.steps(),
            "noise_multiplier": self.dp_sgd.noise_multiplier,
            "epsilon": self.dp_sgd.epsilon(self.dp.delta),
            "accountant_history": [list(h) for h in self.dp_sgd.engine.accountant.history],
        }

    def _rng_state(self) -> dict:
        """The streams' states, released count, accountant history and secure steps (resume)."""
        return {
            "batches": self.rng_batches.get_state(),
            "noise": self.rng_noise.get_state(),
            "secure": self.rng_secure.get_state(),  # the noise stream's itself on CPU
            "n_released": self.n_released,
            "accountant": [list(h) for h in self.dp_sgd.engine.accountant.history]
            if self.dp_sgd
            else [],
            "secure_steps": self.secure_steps,
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
        if "secure" in state:
            self.rng_secure.set_state(state["secure"])
        self.secure_steps = int(state.get("secure_steps", 0))
        if self.dp_sgd is not None:
            self.dp_sgd.engine.accountant.history = [tuple(h) for h in state["accountant"]]


class DPClient(DPSGDClient):
    """The base of DP-CVAE and DP-CGAN clients: data in model space (squashed), a latent
    stream, the private engine of the network that sees the data.

    A subclass trains its networks (`fit`, `train_epochs`), samples from released weights
    (`sample`), and says what it shares (`released_weights`, `initial_weights`)."""

    def __init__(
        self,
        *,
        data: ClientData,
        n_classes: int,
        cfg: GenerativeConfig,
        dp: DPConfig,
        seed: int,
        secret: bytes | None = None,
        device: str = "cpu",
        plan: SecurePlan | None = None,
    ):
        """A client of `data`, its models built and made private (DP on).

        Args:
            data: the client's data.
            n_classes: the number of classes.
            cfg: the generative model's settings.
            dp: the DP settings.
            seed: the client seed.
            secret: the key of its private draws (None: drawn here when the noise is secure).
            device: where its tensors and generators live.
            plan: the public plan of its secure releases (None: no secure aggregation).
        """
        super().__init__(
            data=data,
            x=squash(data.x_train, cfg.squash_temperature),
            n_classes=n_classes,
            schedule=Schedule(cfg.n_rounds, cfg.local_epochs, cfg.batch_size),
            dp=dp,
            seed=seed,
            secret=secret,
            device=device,
            plan=plan,
        )
        self.cfg = cfg
        self.rng_latent = self.stream(LATENT)
        self._build(seed)

    def _build(self, seed: int) -> None:
        """The method's models and optimizers (seeded from the client seed), made private."""
        raise NotImplementedError

    def can_sample(self, weights: dict[str, torch.Tensor]) -> np.ndarray:
        """Per class, whether the global model can sample it: always (it takes any label)."""
        return np.ones(self.n_classes, dtype=bool)

    # --- what each subclass implements (CVAEClient, CGANClient) ---------------------------

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """One round of local training from the global weights; what it releases."""
        raise NotImplementedError

    def train_epochs(self, n_epochs: int) -> list[float]:
        """Local epochs of (DP-)training; the loss of each step."""
        raise NotImplementedError

    def sample(self, weights: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
        """Synthetic embeddings (model space) from released weights, one per label."""
        raise NotImplementedError

    def released_weights(self) -> StateDict:
        """What this client sends (a copy)."""
        raise NotImplementedError

    @staticmethod
    def released_model(
        weights: StateDict, dim: int, n_classes: int, cfg: GenerativeConfig
    ) -> torch.nn.Module:
        """A model holding released weights, called as (z, onehot)."""
        raise NotImplementedError

    @staticmethod
    def initial_weights(dim: int, n_classes: int, cfg: GenerativeConfig, seed: int) -> StateDict:
        """The server's initial shared weights, seeded by `seed`."""
        raise NotImplementedError

    @staticmethod
    def parameter_counts(dim: int, n_classes: int, cfg: GenerativeConfig) -> dict[str, int]:
        """Parameters shared (`shared`) and of the whole model (`total`)."""
        raise NotImplementedError

    @staticmethod
    def latent_draw(n: int, cfg: GenerativeConfig, rng: torch.Generator) -> torch.Tensor:
        """The latent draws of `n` synthetic samples."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything a resumed run needs of this client (models, optimizers, generators)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def _rng_state(self) -> dict:
        return {**super()._rng_state(), "latent": self.rng_latent.get_state()}

    def _load_rng_state(self, state: dict) -> None:
        super()._load_rng_state(state)
        self.rng_latent.set_state(state["latent"])
