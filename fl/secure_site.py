"""A site's side of a secure round under Flower (`--secure_aggregation`): SecAgg+ (Flower's
`secaggplus_mod`) carries the site's residues (algorithms/privacy/secure_aggregation.py) so that
the coordinator learns only their sum modulo 2^30 over the sites of the round.

The coordinator's SecAgg+ workflow (fl/secure_rounds.py) sends its messages as `train.secure`;
`secure_mod` runs Flower's mod on them, with the site's own checks of what the coordinator
announces (a site cannot trust the coordinator to run the protocol honestly):
- at setup, before anything derived from the data is computed: at least m sites in the sum
  (the plan's `min_honest`, `--min_honest_sites`), every site holding a share of every other's
  secrets, and a reconstruction threshold of at least m and above the n - m sites that may
  collude with the coordinator (fewer cannot rebuild a site's mask seeds);
- at unmask: the sites it is told are active and those it is told dropped out are disjoint
  (a site named in both would have both its mask seeds rebuilt: its residues in the clear),
  all in the setup's sample, itself active, and at least m active.
`secure_train` is the round itself (the train handler's checks, ledger claim and state): the
site releases each step once, so a replayed round is refused before it is computed. Its reply
is SecAgg+'s FitRes: the residues (float64, exact below 2^53) as the parameters, weight 1, and
in the metrics the site's public numbers: its id, its released noisy count, its epsilon.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NoReturn

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import (
    Code,
    FitRes,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common import recorddict_compat as compat

from algorithms.privacy.secure_dpsgd import RESIDUES, update_step
from fl.policy import Refusal
from fl.records import SECURE_TRAIN, record_int
from fl.settings import run_settings
from fl.site import Site

WEIGHT_NAMES = "names"  # the FitIns config key: the names of the global weights, in order
ROUND = "round"  # the FitIns config key: the round (0-based)


def run_min_honest(context: Context) -> int:
    """m of this run (`--min_honest_sites`): the sites that must be honest in every sum."""
    dp = run_settings(context.run_config).configs.dp
    return dp.min_honest_sites if dp is not None else 1


def _refuse(context: Context, rule: str) -> NoReturn:
    who = context.node_config.get("client-id", context.node_config.get("partition-id"))
    raise Refusal(f"client {who}'s site refuses the secure round: {rule}")


def check_setup(configs: ConfigRecord, m: int, context: Context) -> None:
    """Refuse a SecAgg+ setup of fewer than m sites, of a sparse share graph, or of a
    threshold that n - m colluding sites could reach or that is below m."""
    sample = record_int(configs, Key.SAMPLE_NUMBER)
    shares = record_int(configs, Key.SHARE_NUMBER)
    threshold = record_int(configs, Key.THRESHOLD)
    if sample < m:
        _refuse(context, f"a sum of {sample} sites, fewer than the {m} honest ones it needs")
    if shares != sample:
        _refuse(context, f"{shares} shares of each secret among {sample} sites (needs all)")
    if threshold < max(m, sample - m + 1):
        _refuse(
            context,
            f"reconstruction threshold {threshold}: {sample - m} sites colluding with the "
            f"coordinator must not reach it, and it must be at least {m}",
        )


def check_unmask(configs: ConfigRecord, m: int, context: Context) -> None:
    """Refuse an unmask request that would rebuild a live site's masks: active and dead lists
    that overlap, name a node outside the setup's sample or this site as dead, or fewer than m
    active sites."""
    active = [int(n) for n in _int_list(configs, Key.ACTIVE_NODE_ID_LIST)]
    dead = [int(n) for n in _int_list(configs, Key.DEAD_NODE_ID_LIST)]
    record = context.state.config_records.get(RECORD_KEY_STATE, ConfigRecord())
    sample = set(_int_list(record, "public_keys_dict:K"))
    me = record_int(record, "nid") if "nid" in record else -1
    if both := set(active) & set(dead):
        _refuse(context, f"nodes {sorted(both)} named both active and dead")
    if outside := (set(active) | set(dead)) - sample:
        _refuse(context, f"nodes {sorted(outside)} are not in its sum")
    if me not in active:
        _refuse(context, "it is named dead (or not active) while it answers")
    if len(set(active)) < m:
        _refuse(context, f"{len(set(active))} active sites, fewer than the {m} it needs")


def _int_list(record: ConfigRecord, key: str) -> list[int]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise TypeError(f"SecAgg+ record value {key!r} is not a list of node ids")
    return [int(v) for v in value if isinstance(v, int)]


def checked_secaggplus(min_honest: Callable[[Context], int] = run_min_honest) -> Mod:
    """Flower's `secaggplus_mod` on `train.secure` messages (it acts on type `train` only: the
    message is shown to it as `train` and the reply sent back as `train.secure`), with the
    site's checks of the setup and unmask stages (module docstring); `min_honest(context)`:
    this run's m."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        m = min_honest(context)
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = configs.get(Key.STAGE) if configs is not None else None
        if configs is not None and stage == Stage.SETUP:
            check_setup(configs, m, context)
        if configs is not None and stage == Stage.UNMASK:
            check_unmask(configs, m, context)
        msg.metadata.message_type = MessageType.TRAIN
        try:
            reply = secaggplus_mod(msg, context, call_next)
        finally:
            msg.metadata.message_type = SECURE_TRAIN
        reply.metadata.message_type = SECURE_TRAIN
        return reply

    return mod


secure_mod = checked_secaggplus()


def secure_train(msg: Message, context: Context) -> Message:
    """One secure round (called by SecAgg+'s collect stage): the FitIns' global weights and
    round, the train handler's checks and claim (`Site.train_round`: a replayed step is
    refused), and the residues as the FitRes (weight 1) with the site's public numbers."""
    site = Site(context)
    site.require_policy()
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    rnd = int(fitins.config[ROUND])
    names = json.loads(str(fitins.config[WEIGHT_NAMES]))
    arrays = parameters_to_ndarrays(fitins.parameters)
    weights = {k: torch.from_numpy(np.array(a)) for k, a in zip(names, arrays, strict=True)}
    update = site.train_round(weights, rnd)
    if RESIDUES not in update.weights or update_step(update) != rnd:
        site.refuse(f"its client made no secure release of round {rnd + 1}")
    residues = update.weights[RESIDUES].numpy().astype(np.float64)
    metrics: dict[str, Scalar] = {"id": site.client_id, "n_samples": int(update.n_samples)}
    if "epsilon" in update.metrics:
        metrics["epsilon"] = float(update.metrics["epsilon"])
    res = FitRes(Status(Code.OK, "secure"), ndarrays_to_parameters([residues]), 1, metrics)
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)
