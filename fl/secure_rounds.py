"""The coordinator's secure rounds under Flower (`--secure_aggregation`): each round is one run
of Flower's SecAgg+ workflow over the round's sites, so the coordinator learns only the modular
sum of their residues (algorithms/privacy/secure_aggregation.py), which it decodes and steps
from with the simulation's code (`SecureServer.step_from_total` for dpcvae, `pool_total` for
dpfedpft's one release).

SecAgg+ sums weighted, quantized floats; it carries integers exactly with clipping range
c = 2^30, quantization range 2c (the quantizer is then the identity on the residues shifted by
c), weight 1 (each site's FitRes `num_examples`) and a modulus above n x 2c (the weights' sum is
taken modulo it too): its output, the mean, times n, rounded and reduced modulo 2^30 is the sum
of the residues modulo 2^30 (`secure_sum`). Every site holds a share of every other's secrets;
the reconstruction threshold is at least m (a sum holds at least m sites) and above the n - m
sites that may collude with the coordinator. Its messages travel as `train.secure`
(`SecureGrid`), the sites' secure action (fl/secure_site.py). Its masks come from a Mersenne
Twister seeded with 32 bits (flwr 1.42): not cryptographic (docs/privacy.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate, Rounds, run_rounds
from algorithms.methods.generative import secure_coordinator
from algorithms.methods.pft_server import pool_total
from algorithms.methods.registry import required
from algorithms.options import Settings
from algorithms.privacy.secure_aggregation import SecurePlan
from fl.charge import secure_run_plan
from fl.records import SECURE_TRAIN, as_float
from fl.secure_site import ROUND, WEIGHT_NAMES
from fl.settings import is_pft
from fl.sites import Sites
from utils.seeding import SAMPLING, derive_seed

# The server's step of a secure round: (modular sum, the sites' released counts) -> weights.
Step = Callable[[torch.Tensor, list[int]], StateDict]


def threshold(n_sites: int, min_honest: int) -> int:
    """SecAgg+'s reconstruction threshold for a sum of `n_sites` with m honest: at least m (so
    every unmasked sum holds m sites) and above the n - m others (they cannot rebuild a
    site's mask seeds with the coordinator); at least 2 (Flower's minimum)."""
    return max(min_honest, n_sites - min_honest + 1, 2)


def modulus(n_sites: int, bits: int) -> int:
    """SecAgg+'s modulus: a power of 2 above the sum of n weights of 2^(bits + 1) each."""
    return 2 ** (bits + 1 + math.ceil(math.log2(n_sites)) + 1)


class SecureGrid(Grid):
    """The coordinator's grid as SecAgg+'s workflow sees it: its `train` messages are sent as
    `train.secure` (the sites' secure action); the reasons of error replies are kept."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.errors: list[str] = []

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        self.grid.set_run(run_id)  # type: ignore[arg-type]

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self.grid.run

    def create_message(  # noqa: PLR0913 (Flower's signature)
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):  # type: ignore[no-untyped-def]
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(self._secure(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self.grid.send_and_receive(self._secure(messages), timeout=timeout))
        for reply in replies:
            if reply.has_error():
                self.errors.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
        return replies

    @staticmethod
    def _secure(messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        for msg in out:
            if msg.metadata.message_type == MessageType.TRAIN:
                msg.metadata.message_type = SECURE_TRAIN
        return out


class CapturingStrategy(Strategy):
    """The legacy Strategy SecAgg+'s workflow needs: `configure_fit` picks the round's nodes
    with the global weights and the round, `aggregate_fit` keeps the unmasked result (the
    mean) and each site's FitRes metrics; nothing else."""

    def __init__(self, grid: Grid, nodes: Sequence[int], config: dict[str, Scalar]):
        self.grid = grid
        self.nodes = list(nodes)
        self.config = config
        self.results: list[tuple[ClientProxy, FitRes]] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [
            (GridClientProxy(node, self.grid, 0), FitIns(parameters, dict(self.config)))
            for node in self.nodes
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = results
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


def secure_sum(
    *,
    grid: Grid,
    nodes: Sequence[int],
    weights: StateDict,
    rnd: int,
    plan: SecurePlan,
    timeout: float | None = None,
) -> tuple[torch.Tensor, dict[int, dict[str, Scalar]]]:
    """One SecAgg+ round over `nodes`: each gets the global `weights` and the round, runs its
    secure release; returns the sum of their residues modulo 2^bits (int64) and each node's
    FitRes metrics (its id, released count, epsilon). Every node must take part.

    Args:
        grid: the ServerApp's grid.
        nodes: the round's SuperNodes.
        weights: the global weights the sites start from (empty: dpfedpft's release).
        rnd: the round (0-based).
        plan: the public plan (its m, bits, and the sum's size).
        timeout: how long each stage waits for the replies (None: no limit).
    """
    names = list(weights)
    parameters = ndarrays_to_parameters([weights[k].detach().cpu().numpy() for k in names])
    secure = SecureGrid(grid)
    strategy = CapturingStrategy(secure, nodes, {ROUND: rnd, WEIGHT_NAMES: json.dumps(names)})
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: rnd + 1}),
            MAIN_PARAMS_RECORD: compat.parameters_to_arrayrecord(parameters, keep_input=True),
        }
    )
    context = LegacyContext(Context(0, 0, {}, state, {}), strategy=strategy)
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every site holds a share of every other's secrets
        reconstruction_threshold=threshold(len(nodes), plan.min_honest),
        max_weight=1.0,
        clipping_range=float(2**plan.bits),
        quantization_range=2 ** (plan.bits + 1),
        modulus_range=modulus(len(nodes), plan.bits),
        timeout=timeout,
    )
    workflow(secure, context)
    results = strategy.results
    why = "; ".join(secure.errors) or "too few sites answered"
    if results is None:
        raise RuntimeError(f"secure round {rnd + 1}: SecAgg+ halted ({why})")
    missing = sorted(set(nodes) - {proxy.node_id for proxy, _ in results})
    if missing:
        raise RuntimeError(f"secure round {rnd + 1}: nodes {missing} dropped out ({why})")
    (mean,) = parameters_to_ndarrays(results[0][1].parameters)
    total = np.rint(mean.astype(np.float64) * len(results)).astype(np.int64) % 2**plan.bits
    metrics = {proxy.node_id: dict(res.metrics) for proxy, res in results}
    return torch.from_numpy(total), metrics


class SecureRounds:
    """main.py's rounds with a secure sum: each round's `fit` runs SecAgg+ over the chosen
    sites and keeps the sum; `aggregate` steps from it (`step`) with the sites' counts."""

    def __init__(self, sites: Sites, order: list[int], plan: SecurePlan, step: Step):
        self.sites, self.order, self.plan, self.step = sites, order, plan, step
        self.total: torch.Tensor | None = None

    def fit(self, chosen: Sequence[int], weights: StateDict, rnd: int) -> list[ClientUpdate]:
        """The round's SecAgg+ sum; per site an update without weights: its released count
        and epsilon (the history's columns, as main.py's)."""
        nodes = [self.sites.node_of[self.order[i]] for i in chosen]
        start = time.perf_counter()
        self.total, metrics = secure_sum(
            grid=self.sites.grid,
            nodes=nodes,
            weights=weights,
            rnd=rnd,
            plan=self.plan,
            timeout=self.sites.reply_timeout,
        )
        seconds = time.perf_counter() - start
        print(f"{rnd + 1}: secure train, {len(nodes)} replies in {seconds:.1f} s", flush=True)
        updates = []
        for i, node in zip(chosen, nodes):
            m = metrics[node]
            if int(as_float(m["id"], "id")) != self.order[i]:
                raise RuntimeError(f"round {rnd + 1}: client {self.order[i]} replied as another")
            sent = {"epsilon": as_float(m["epsilon"], "epsilon")} if "epsilon" in m else {}
            updates.append(ClientUpdate({}, int(as_float(m["n_samples"], "n_samples")), sent))
        return updates

    def aggregate(self, updates: Sequence[ClientUpdate]) -> StateDict:
        """The server's step from this round's sum and the sites' released counts."""
        if self.total is None:
            raise RuntimeError("a secure step before its round's sum")
        total, self.total = self.total, None
        return self.step(total, [u.n_samples for u in updates])


def secure_train_rounds(
    sites: Sites, order: list[int], initial: StateDict, settings: Settings, shape: tuple[int, int]
) -> tuple[StateDict, list[dict]]:
    """The rounds of a secure run (dpcvae: one DP step per round, the coordinator's Adam on the
    decoded sum; dpfedpft: the one release, pooled) with the plan the sites build
    (`fl.charge.secure_run_plan`) and main.py's sampling seed; `shape`: (embedding size,
    classes)."""
    configs, method, seed = settings.configs, settings.method.name, settings.seed
    plan = secure_run_plan(settings, len(order), shape)
    gen = required(configs.generative, "generative")
    if is_pft(settings):
        cfg = required(configs.pft, "pft")
        n_rounds = 1

        def step(total: torch.Tensor, counts: list[int]) -> StateDict:
            return pool_total(total, len(counts), plan, cfg, shape)

    else:
        server = secure_coordinator(initial, plan, gen)
        step, n_rounds = server.step_from_total, gen.n_rounds
    secure = SecureRounds(sites, order, plan, step)
    rounds = Rounds(
        n_rounds, secure.aggregate, 1.0, derive_seed(seed, SAMPLING), desc=f"{method} secure"
    )
    return run_rounds(len(order), secure.fit, initial, rounds)
