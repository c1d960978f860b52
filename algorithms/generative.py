"""DP-CVAE (the paper's method) and DP-CGAN: federated DP generative models of embeddings.

Each client trains its generative model with DP-SGD; each round only the decoder (CVAE) or
generator (CGAN) leaves the client, and the server averages them weighted by training size.
After the last round every client samples a synthetic dataset from the global model, trains a
head on its real data and one on the synthetic data, and the lambda protocol mixes them.

Data: per-record standardized embeddings, squashed into (0, 1) by a fixed logistic (see
data/features.py): no statistic of private data is used for normalization.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from algorithms.aggregation import StateDict
from algorithms.evaluation import ClientProbs, Outcome
from algorithms.federation import ClientUpdate, run_federation
from algorithms.heads import HeadConfig, predict_proba, train_head
from algorithms.privacy import (
    DPConfig,
    PrivateTraining,
    calibrate_noise,
    dp_step,
    make_private,
    poisson_batch,
    privacy_report,
    sample_rate_for,
    steps_per_epoch,
)
from data.clients import ClientData
from data.features import squash, unsquash
from models.cgan import Discriminator, Generator
from models.cvae import CVAE, cvae_loss_per_sample, decoder_state, load_decoder
from utils.checkpoint import RoundCheckpoint
from utils.metrics import prdc, sinkhorn_wasserstein
from utils.progress import progress
from utils.seeding import (
    BATCHES,
    DP_NOISE,
    GENERATIVE_CLIENT,
    GENERATIVE_GLOBAL,
    INIT,
    INIT_DISCRIMINATOR,
    INIT_GENERATOR,
    LABELS,
    LATENT,
    LOCAL_HEAD,
    SAMPLE,
    SAMPLING,
    SYNTHETIC_HEAD,
    derive_seed,
    generator,
    seeded,
)

GENERATIVE_METHODS = ("dpcvae", "dpcgan")
SYNTHETIC_LABELS = ("match", "uniform")


@dataclass(frozen=True)
class GenerativeConfig:
    """Paper defaults: 50 rounds x 5 local epochs, batch 256, CVAE Adam lr 1e-3 and beta 0.1,
    CGAN Adam lr 2e-4 with betas (0.5, 0.999), latent 100, as many samples per class as real."""

    n_rounds: int = 50
    local_epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    gan_lr: float = 2e-4
    beta: float = 0.1
    latent_var: float = 1.0
    hidden_dim: int = 256
    latent_dim: int = 100
    generated_factor: float = 1.0
    synthetic_labels: str = "match"
    squash_temperature: float = 2.0

    def __post_init__(self) -> None:
        checks = [
            (self.n_rounds >= 1, f"--n_fedavg_rounds must be >= 1, got {self.n_rounds}"),
            (self.local_epochs >= 1, f"--local_epochs_gen must be >= 1, got {self.local_epochs}"),
            (self.batch_size >= 1, f"--gen_batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.gan_lr > 0, f"--gan_lr must be > 0, got {self.gan_lr}"),
            (self.beta >= 0, f"--cvae_beta must be >= 0, got {self.beta}"),
            (self.latent_var > 0, f"--cvae_var must be > 0, got {self.latent_var}"),
            (self.hidden_dim >= 1, f"--hidden_dim must be >= 1, got {self.hidden_dim}"),
            (self.latent_dim >= 1, f"--latent_dim must be >= 1, got {self.latent_dim}"),
            (
                self.generated_factor > 0,
                f"--generated_factor must be > 0, got {self.generated_factor}",
            ),
            (
                self.synthetic_labels in SYNTHETIC_LABELS,
                f"--synthetic_labels must be one of {SYNTHETIC_LABELS}, "
                f"got {self.synthetic_labels!r}",
            ),
            (
                self.squash_temperature > 0,
                f"--squash_temperature must be > 0, got {self.squash_temperature}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def synthetic_label_counts(
    y: np.ndarray, n_classes: int, cfg: GenerativeConfig, rng: np.random.Generator
) -> np.ndarray:
    """Samples to generate per class: the client's own counts x factor (`match`, as the paper),
    or its total x factor spread evenly over all classes (`uniform`)."""
    if cfg.synthetic_labels == "match":
        return (np.bincount(y, minlength=n_classes) * cfg.generated_factor).astype(np.int64)
    total = int(len(y) * cfg.generated_factor)
    counts = np.full(n_classes, total // n_classes, dtype=np.int64)
    counts[rng.choice(n_classes, size=total % n_classes, replace=False)] += 1
    return counts


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused kernel: the same update as the per-tensor loop (up to rounding),
    about 3x faster on CPU for these models (a tenth of a DP step)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


class _DPClient:
    """What DP-CVAE and DP-CGAN clients share: data in model space, RNGs, the private engine."""

    # How DP-SGD clips (see algorithms.privacy.GRAD_SAMPLE_MODES); the others are references.
    grad_sample_mode = "fast"

    def __init__(
        self, data: ClientData, n_classes: int, cfg: GenerativeConfig, dp: DPConfig, seed: int
    ):
        self.id, self.cfg, self.dp, self.n_classes = data.id, cfg, dp, n_classes
        self.x = torch.as_tensor(squash(data.x_train, cfg.squash_temperature))
        self.y = torch.as_tensor(data.y_train, dtype=torch.int64)
        self.onehot = F.one_hot(self.y, n_classes).float()
        self.n = len(self.y)
        self.steps_epoch = steps_per_epoch(self.n, cfg.batch_size)
        self.total_steps = cfg.n_rounds * cfg.local_epochs * self.steps_epoch
        self.rng_batches = generator(derive_seed(seed, BATCHES))
        self.rng_noise = generator(derive_seed(seed, DP_NOISE))
        self.rng_latent = generator(derive_seed(seed, LATENT))
        self.private: PrivateTraining | None = None

    def _make_private(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not self.dp.enabled:
            return
        rate = sample_rate_for(self.n, self.cfg.batch_size)
        sigma = calibrate_noise(self.dp, rate, self.total_steps, self.steps_epoch)
        self.private = make_private(
            model,
            optimizer,
            self.n,
            self.cfg.batch_size,
            self.dp,
            sigma,
            self.rng_noise,
            grad_sample_mode=self.grad_sample_mode,
        )

    def _batches(self):
        """Index batches of one local epoch: Poisson sampled under DP, shuffled otherwise."""
        if self.private is not None:
            for _ in range(self.steps_epoch):
                yield poisson_batch(self.n, self.private.sample_rate, self.rng_batches)
        else:
            order = torch.randperm(self.n, generator=self.rng_batches)
            yield from order.split(self.cfg.batch_size)

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
            return {"id": self.id, "epsilon": None}
        return {
            "id": self.id,
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
            "accountant": [list(h) for h in self.private.engine.accountant.history]
            if self.private
            else [],
        }

    def _load_rng_state(self, state: dict) -> None:
        self.rng_batches.set_state(state["batches"])
        self.rng_noise.set_state(state["noise"])
        self.rng_latent.set_state(state["latent"])
        if self.private is not None:
            self.private.engine.accountant.history = [tuple(h) for h in state["accountant"]]


class CVAEClient(_DPClient):
    """A DP-CVAE client: encoder and decoder trained with DP-SGD; only the decoder is sent."""

    def __init__(
        self, data: ClientData, n_classes: int, cfg: GenerativeConfig, dp: DPConfig, seed: int
    ):
        super().__init__(data, n_classes, cfg, dp, seed)
        dim = self.x.shape[1]
        self.model = seeded(
            derive_seed(seed, INIT), lambda: CVAE(dim, n_classes, cfg.hidden_dim, cfg.latent_dim)
        )
        self.optimizer = adam(self.model.parameters(), lr=cfg.lr)
        self._make_private(self.model, self.optimizer)

    def _loss(self, idx: torch.Tensor) -> torch.Tensor:
        x, oh = self.x[idx], self.onehot[idx]
        eps = torch.randn(len(idx), self.cfg.latent_dim, generator=self.rng_latent)
        forward = self.private.module if self.private is not None else self.model
        recon, mu, logvar = forward(x, oh, eps)
        return cvae_loss_per_sample(x, recon, mu, logvar, self.cfg.beta, self.cfg.batch_size)

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """Local epochs from the global decoder (the encoder stays local); returns the decoder."""
        load_decoder(self.model, global_weights)
        losses = self.train_epochs(self.cfg.local_epochs)
        return ClientUpdate(decoder_state(self.model), self.n, self._metrics(losses))

    def train_epochs(self, n_epochs: int) -> list[float]:
        """`n_epochs` local epochs from the current weights; the mean loss of each step."""
        self.model.train()
        losses = []
        for _ in range(n_epochs):
            for idx in self._batches():
                if self.private is not None:
                    loss = self._loss(idx) if len(idx) else None
                    dp_step(self.private, loss)
                else:
                    loss = self._loss(idx)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.mean().backward()
                    self.optimizer.step()
                if loss is not None:
                    losses.append(float(loss.detach().mean()))
        self._release_gradients(self.private.optimizer if self.private else self.optimizer)
        return losses

    @torch.no_grad()
    def sample(
        self, global_weights: StateDict, labels: np.ndarray, rng: torch.Generator
    ) -> np.ndarray:
        """Synthetic embeddings (model space) from the global decoder: z = var x N(0, I), as in
        the paper's code (`--cvae_var` scales the latent draw)."""
        load_decoder(self.model, global_weights)
        self.model.eval()
        z = self.cfg.latent_var * torch.randn(len(labels), self.cfg.latent_dim, generator=rng)
        oh = F.one_hot(torch.as_tensor(labels, dtype=torch.int64), self.n_classes).float()
        return self.model.decode(z, oh).numpy()

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self._rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_rng_state(state)


class CGANClient(_DPClient):
    """A DP-CGAN client: DP-SGD on the discriminator (the only network that sees data); the
    generator, trained through the discriminator only, is private by post-processing and is
    the shared part. It starts every round from the global generator (never re-initialized)."""

    def __init__(
        self, data: ClientData, n_classes: int, cfg: GenerativeConfig, dp: DPConfig, seed: int
    ):
        super().__init__(data, n_classes, cfg, dp, seed)
        dim = self.x.shape[1]
        self.generator = seeded(
            derive_seed(seed, INIT_GENERATOR), lambda: Generator(dim, n_classes, cfg.latent_dim)
        )
        self.discriminator = seeded(
            derive_seed(seed, INIT_DISCRIMINATOR), lambda: Discriminator(dim, n_classes)
        )
        betas = (0.5, 0.999)
        self.opt_g = adam(self.generator.parameters(), lr=cfg.gan_lr, betas=betas)
        self.opt_d = adam(self.discriminator.parameters(), lr=cfg.gan_lr, betas=betas)
        self._make_private(self.discriminator, self.opt_d)

    def _fake(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated samples with uniformly drawn labels (no use of the client's label counts)."""
        z = torch.randn(n, self.cfg.latent_dim, generator=self.rng_latent)
        y = torch.randint(0, self.n_classes, (n,), generator=self.rng_latent)
        oh = F.one_hot(y, self.n_classes).float()
        return self.generator(z, oh), oh

    def _n_fake(self, idx: torch.Tensor) -> int:
        """Fake samples per step, as many as real ones on average: under DP the expected batch
        size q * n (the public number the DP optimizer divides by, whatever the drawn batch),
        otherwise the batch's own size."""
        if self.private is not None:
            return max(1, round(self.private.sample_rate * self.n))
        return len(idx)

    def _step(self, idx: torch.Tensor) -> float:
        """One discriminator step, then one generator step on the same fake batch."""
        fake, oh_fake = self._fake(self._n_fake(idx))
        # The fake samples join the real Poisson batch in one clipped and noised step. Their
        # terms use no record, and their number is fixed for the run from the client's size,
        # like the sampling rate (the size is not covered by DP; see NOT_COVERED): one record
        # still changes the clipped sum by at most max_grad_norm.
        x = torch.cat([self.x[idx], fake.detach()])
        oh = torch.cat([self.onehot[idx], oh_fake])
        target = torch.cat([torch.ones(len(idx)), torch.zeros(len(fake))])
        disc = self.private.module if self.private is not None else self.discriminator
        loss = F.binary_cross_entropy(disc(x, oh), target, reduction="none")
        if self.private is not None:
            dp_step(self.private, loss)
        else:
            self.opt_d.zero_grad(set_to_none=True)
            loss.mean().backward()
            self.opt_d.step()
        # the generator against the updated discriminator (not a private step: no record)
        with self.private.paused() if self.private is not None else contextlib.nullcontext():
            prob = self.discriminator(fake, oh_fake)
            g_loss = F.binary_cross_entropy(prob, torch.ones_like(prob))
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward(inputs=list(self.generator.parameters()))
            self.opt_g.step()
        return float(loss.detach().mean())

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """Local epochs from the global generator; returns the generator."""
        self.generator.load_state_dict(global_weights)
        losses = self.train_epochs(self.cfg.local_epochs)
        weights = {k: v.detach().clone() for k, v in self.generator.state_dict().items()}
        return ClientUpdate(weights, self.n, self._metrics(losses))

    def train_epochs(self, n_epochs: int) -> list[float]:
        """`n_epochs` local epochs from the current weights; the discriminator's step losses."""
        self.generator.train()
        self.discriminator.train()
        losses = []
        for _ in range(n_epochs):
            for idx in self._batches():
                losses.append(self._step(idx))
        self._release_gradients(self.opt_g, self.private.optimizer if self.private else self.opt_d)
        return losses

    @torch.no_grad()
    def sample(
        self, global_weights: StateDict, labels: np.ndarray, rng: torch.Generator
    ) -> np.ndarray:
        self.generator.load_state_dict(global_weights)
        self.generator.eval()
        z = torch.randn(len(labels), self.cfg.latent_dim, generator=rng)
        oh = F.one_hot(torch.as_tensor(labels, dtype=torch.int64), self.n_classes).float()
        return self.generator(z, oh).numpy()

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            **self._rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self._load_rng_state(state)


def init_global_weights(
    method: str, dim: int, n_classes: int, cfg: GenerativeConfig, seed: int
) -> StateDict:
    """The server's initial shared model (decoder or generator), seeded by the run seed."""
    if method == "dpcvae":
        model = seeded(seed, lambda: CVAE(dim, n_classes, cfg.hidden_dim, cfg.latent_dim))
        return decoder_state(model)
    gen = seeded(seed, lambda: Generator(dim, n_classes, cfg.latent_dim))
    return {k: v.detach().clone() for k, v in gen.state_dict().items()}


def make_clients(
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    seed: int,
) -> list[CVAEClient | CGANClient]:
    cls = CVAEClient if method == "dpcvae" else CGANClient
    return [
        cls(c, n_classes, cfg, dp, derive_seed(seed, method, GENERATIVE_CLIENT, c.id))
        for c in clients
    ]


def count_parameters(method: str, dim: int, n_classes: int, cfg: GenerativeConfig) -> dict:
    """Parameters of the shared part and of the whole generative model (CVAE vs CGAN size)."""
    if method == "dpcvae":
        model = CVAE(dim, n_classes, cfg.hidden_dim, cfg.latent_dim)
        shared = sum(p.numel() for p in model.decoder.parameters())
        total = sum(p.numel() for p in model.parameters())
    else:
        g, d = Generator(dim, n_classes, cfg.latent_dim), Discriminator(dim, n_classes)
        shared = sum(p.numel() for p in g.parameters())
        total = shared + sum(p.numel() for p in d.parameters())
    return {"shared": shared, "total": total}


def train_generative(
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    seed: int,
    checkpoint: RoundCheckpoint | None = None,
) -> tuple[list[CVAEClient | CGANClient], StateDict, list[dict]]:
    """The federated training alone: the clients (with their accountants), the final global
    decoder or generator, and the per-round history. With `checkpoint`, training continues from
    its last round (if any) and the checkpoint is rewritten after every round.

    The torch thread budget (torch.get_num_threads(), main.py's --num_threads) is spent on
    clients, not inside them: that many clients train at once, one thread each. Threads inside
    one client meet at every operation and slow down 10-20x when other processes share the
    cores; clients in threads do not wait on each other. Results do not depend on it."""
    dim = clients[0].x_train.shape[1]
    gen_clients = make_clients(method, clients, n_classes, cfg, dp, seed)
    weights = init_global_weights(
        method, dim, n_classes, cfg, derive_seed(seed, method, GENERATIVE_GLOBAL)
    )
    history, start = [], 0
    if checkpoint is not None:
        weights, history, start = checkpoint.restore(gen_clients, weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        weights, history = run_federation(
            gen_clients,
            weights,
            cfg.n_rounds,
            seed=derive_seed(seed, SAMPLING),
            start_round=start,
            history=history,
            desc=method,
            workers=min(threads, len(gen_clients)),
            after_round=checkpoint.saver(gen_clients) if checkpoint is not None else None,
        )
    finally:
        torch.set_num_threads(threads)
    return gen_clients, weights, history


@dataclass
class FinishedClient:
    """One client's last step: the probabilities of its head on real data (local) and of its
    head on synthetic data (global), the fidelity of its synthetic set, and that set."""

    local: ClientProbs
    global_: ClientProbs
    wasserstein: float
    quality: dict[str, float]
    synthetic: np.ndarray
    labels: np.ndarray


def finish_client(
    client: CVAEClient | CGANClient,
    data: ClientData,
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    head_cfg: HeadConfig,
    seed: int,
) -> FinishedClient:
    """Run where the client's data lives: synthesize from the global model, fit a head on real
    and one on synthetic data, and measure the fidelity of the synthetic embeddings."""
    rng = np.random.default_rng(derive_seed(seed, LABELS, data.id))
    counts = synthetic_label_counts(data.y_train, n_classes, cfg, rng)
    labels = np.repeat(np.arange(n_classes), counts)
    synthetic = client.sample(weights, labels, generator(derive_seed(seed, SAMPLE, data.id)))
    real = squash(data.x_train, cfg.squash_temperature)
    wasserstein, quality = sinkhorn_wasserstein(real, synthetic), prdc(real, synthetic)
    head_syn = train_head(
        unsquash(synthetic, cfg.squash_temperature),
        labels,
        n_classes,
        head_cfg,
        derive_seed(seed, SYNTHETIC_HEAD, data.id),
    )
    head_real = train_head(
        data.x_train, data.y_train, n_classes, head_cfg, derive_seed(seed, LOCAL_HEAD, data.id)
    )
    return FinishedClient(
        local=ClientProbs(
            predict_proba(head_real, data.x_val), predict_proba(head_real, data.x_test)
        ),
        global_=ClientProbs(
            predict_proba(head_syn, data.x_val), predict_proba(head_syn, data.x_test)
        ),
        wasserstein=wasserstein,
        quality=quality,
        synthetic=synthetic,
        labels=labels,
    )


def fidelity_report(
    cfg: GenerativeConfig, wasserstein: list[float], quality: list[dict[str, float]]
) -> dict:
    """The `fidelity` block of metrics.json from the clients' values (in client order)."""
    fidelity = {
        "space": f"squashed (temperature {cfg.squash_temperature})",
        "wasserstein": wasserstein,
        "wasserstein_mean": float(np.mean(wasserstein)),
    }
    for name in ("precision", "recall", "density", "coverage"):
        fidelity[name] = [q[name] for q in quality]
        fidelity[f"{name}_mean"] = float(np.nanmean(fidelity[name]))
    return fidelity


def run_generative(
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    head_cfg: HeadConfig,
    seed: int,
    checkpoint: RoundCheckpoint | None = None,
) -> Outcome:
    """Federated training of the generative model (resumable from `checkpoint`), then per
    client: synthesize, fit a head on real and one on synthetic data, and measure the fidelity
    of the synthetic embeddings."""
    dim = clients[0].x_train.shape[1]
    gen_clients, weights, history = train_generative(
        method, clients, n_classes, cfg, dp, seed, checkpoint
    )
    finished = [
        finish_client(client, data, weights, n_classes, cfg, head_cfg, seed)
        for data, client in progress(
            list(zip(clients, gen_clients)), desc="synthesize", unit="client"
        )
    ]
    params = count_parameters(method, dim, n_classes, cfg)
    privacy = privacy_report(dp, [c.privacy() for c in gen_clients])
    return Outcome(
        [f.local for f in finished],
        [f.global_ for f in finished],
        history,
        params_shared=params["shared"],
        privacy=privacy,
        fidelity=fidelity_report(
            cfg, [f.wasserstein for f in finished], [f.quality for f in finished]
        ),
        params_model=params["total"],
        synthetic=[(f.synthetic, f.labels) for f in finished],
    )
