"""A Flower site for one message: its settings, data, privacy policy and ledger, the key of its
noise, and its client object (built by the method's registry factory) restored from
Context.state."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
import secrets
from pathlib import Path
from typing import Any, NoReturn, Protocol

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from algorithms.experiment import warn_privacy_settings
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate
from algorithms.methods.registry import Accounted, ClientSpec, required
from algorithms.methods.synthesis import ClientSampler
from algorithms.options import Settings
from algorithms.privacy.accounting import remember_calibration
from algorithms.privacy.dp_client import DPClient
from algorithms.run_files import shares_dp
from fl.charge import run_binding
from fl.ledger import Claim, Ledger, booked
from fl.policy import PERMISSIVE, Refusal, assess, site_policy
from fl.records import load_state, record_float, record_int, save_state
from fl.settings import (
    is_generative,
    is_pft,
    load_client,
    node_client_id,
    node_paths,
    run_settings,
    run_sites,
)
from fl.units import check_patient_cap, in_ledger_unit, largest_patient, run_unit
from utils.device import one_torch_thread
from utils.progress import set_quiet

STATE = "client"  # the client object's state_dict() in Context.state


LAST_ROUND = "last-round"  # the last round this client trained (refuses replays)


ANSWERED = "answered"  # the end-of-run steps this site has answered (each once per run)


CALIBRATION = "calibration"  # the client's noise multiplier and what it was calibrated from


SITE_KEY_FILE = ".site_key"  # next to the site's database: its secret for the fingerprint


class SiteClient(ClientSampler, Accounted, Protocol):
    """What the ClientApp uses of a method's client: a round, its state between messages and,
    at the end of a generative run, its privacy line and its sampling (FedAvg's head client
    serves the rounds and the state only)."""

    def fit(self, weights: StateDict, rnd: int, /) -> ClientUpdate: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> None: ...


class Site:
    """This node's settings, client id, policy, ledger and data for one message."""

    def __init__(self, context: Context):
        set_quiet(True)
        node_config = node_policy_config(context.node_config)
        self.policy = site_policy(node_config)  # every key checked first
        self.settings: Settings = run_settings(context.run_config)
        self.client_id = node_client_id(node_config)
        root, split = node_paths(node_config, self.settings)
        self.data, self.n_classes, self.facts = load_client(root, split, self.client_id)
        self.root = root
        self.context = context
        self.ledger = site_ledger(node_config, root, str(self.facts.fingerprint), self.client_id)
        # the sites in a sum, as the ServerApp counts them (a secure plan's n_sites); the shape
        # is public (hello sends it)
        self.n_sites = run_sites(context.run_config, self.settings)
        shape = (int(self.data.x_train.shape[1]), self.n_classes)
        cost, self.violation = assess(self.policy, self.settings, n_sites=self.n_sites, shape=shape)
        # the unit the run protects here and the ledger counts in (fl/units.py); the site's
        # largest patient is checked against the public cap, never sent nor charged by
        patients = self.data.patients_train
        self.ledger_unit = self.ledger.unit()
        check_patient_cap(self.policy, self.ledger_unit, largest_patient(patients))
        try:
            self.unit = run_unit(self.settings, patients is not None)
        except ValueError as err:  # --privacy_unit patient where it cannot be
            self.unit, self.violation = "record", self.violation or str(err)
        charge = booked(run_binding(self.settings), self.policy, cost)
        self.charge, rule = in_ledger_unit(charge, self.policy, self.ledger_unit, self.unit)
        self.violation = self.violation or rule

    def refuse(self, rule: str) -> NoReturn:
        raise Refusal(f"client {self.client_id}'s site refuses: {rule}")

    def refusal(self) -> str | None:
        """Whether the site would refuse the run, from its policy and its ledger alone (free,
        claims nothing, reads no record): the rule, or None."""
        return self.violation or self.ledger.violation(self.context.run_id, self.charge)

    def require_policy(self) -> None:
        """Refuse any message of a run that breaks the site's policy."""
        if self.violation:
            self.refuse(self.violation)

    def n_rounds(self) -> int:
        """The rounds this run's noise is calibrated for (the run's last round)."""
        s = self.settings
        if is_pft(s):
            return 1
        if is_generative(s):
            return required(s.configs.generative, "generative").n_rounds
        return required(s.configs.fedavg, "fedavg").n_rounds

    def last_round(self) -> int | None:
        if LAST_ROUND not in self.context.state:
            return None
        return record_int(self.context.state.config_records[LAST_ROUND], "round")

    def claim(self, key: str, what: str) -> None:
        """Claim a release of this run in the site's ledger (fl/ledger.py), before computing
        it: refused if it was claimed before (an overlapping message or an earlier process),
        if the run ID is bound to another run config, or over the dataset's budget. The run's
        charge (what the site will spend, `fl.charge.run_charge`, as `fl.ledger.booked`) is
        booked at its first claim."""
        self.ledger.claim(self.context.run_id, self.charge, [Claim(key, what)])

    def claim_round(self, rnd: int) -> None:
        """Claim a train round (the run's charge with it at the first claim: the noise is
        calibrated for the whole run)."""
        what = "the one release" if is_pft(self.settings) else f"train round {rnd + 1}"
        self.claim(f"train {rnd}", what)

    def answer_once(self, step: str) -> None:
        """Mark an end-of-run step as answered; refuse it if it already was in this run."""
        state = self.context.state
        done = dict(state.config_records[ANSWERED]) if ANSWERED in state else {}
        if done.get(step):
            self.refuse(f"{step} was already answered in this run (once per run)")
        self.claim(step, f"end-of-run {step}")  # the ledger: overlapping or restarted tasks
        state[ANSWERED] = ConfigRecord({**done, step: True})

    def secret(self) -> bytes | None:
        """The key of this run's secure noise on this site: HMAC of the site's key, its
        dataset, the run ID and the run's binding. A restarted SuperNode rebuilds the same key,
        so it draws the same noise (the noisy count is one release, not one per restart);
        None when the policy's noise source is seeded."""
        if self.policy.noise_source != "secure":
            return None
        key = site_key(self.root, self.context.node_config)
        text = f"noise/{self.ledger.dataset_id}/{self.context.run_id}/{self.charge.binding}"
        return hmac.new(key, text.encode(), hashlib.sha256).digest()

    def client(self) -> SiteClient:
        """The client object, built by the method's registry factory (the one a simulation
        uses) and restored to where the last message left it. A run with DP on gets a client
        that keeps privacy accounting, or a refusal."""
        s = self.settings
        state = self.context.state
        if CALIBRATION in state:  # this run's noise multiplier, found by an earlier message
            known = state.config_records[CALIBRATION]
            remember_calibration(str(known["key"]), record_float(known, "noise-multiplier"))
        configs = s.configs
        if configs.dp is not None:
            dp = dataclasses.replace(configs.dp, noise_source=self.policy.noise_source)
            configs = dataclasses.replace(configs, dp=dp)
        spec = ClientSpec(
            clients=[self.data],
            n_classes=self.n_classes,
            seed=s.seed,
            configs=configs,
            secret=self.secret(),
            device=s.execution.device,
            n_sites=self.n_sites,
        )
        if s.method.make_clients is None:
            self.refuse(f"{s.method.name} has no client a site can build")
        (client,) = s.method.make_clients(spec)
        if shares_dp(s) and not isinstance(client, Accounted):
            self.refuse(f"{s.method.name}'s client keeps no privacy accounting")
        calibration = getattr(client, "calibration", None)  # DP-SGD clients only
        if calibration is not None:
            key, sigma = calibration
            state[CALIBRATION] = ConfigRecord({"key": key, "noise-multiplier": sigma})
        stored = load_state(state, STATE)
        if stored is not None:
            client.load_state_dict(stored)
        return client

    def train_round(self, weights: StateDict, rnd: int) -> ClientUpdate:
        """One local round from the global `weights` (a train or a secure train message),
        refused beyond the run's rounds (the noise is calibrated for them) and for a round
        that is not after the last one trained; claimed in the ledger before it is computed,
        its epsilon checked against the run's charge, the client's state kept."""
        if not 0 <= rnd < self.n_rounds():
            self.refuse(
                f"round {rnd + 1} is beyond the {self.n_rounds()} rounds its noise is "
                "calibrated for"
            )
        last = self.last_round()
        if last is not None and rnd <= last:
            self.refuse(f"asked for round {rnd + 1} after round {last + 1}")
        self.claim_round(rnd)  # claim, then compute: overlapping or replayed messages refused
        if last is None:
            warn_privacy_settings(self.settings.configs, [self.data])
        client = self.client()
        update = fit_round(client, weights, rnd, self.settings.execution.device)
        if shares_dp(self.settings):  # a private run's release carries its epsilon
            spent = update.metrics.get("epsilon")
            if spent is None:
                self.refuse(f"{self.settings.method.name} reported no spent epsilon")
            if spent > (self.charge.epsilon or 0.0) * (1 + 1e-9):  # a calibrated run never does
                self.refuse(
                    f"epsilon {spent:.4g} would exceed the run's charge {self.charge.epsilon:g}"
                )
        save_state(self.context.state, STATE, client.state_dict())
        self.context.state[LAST_ROUND] = ConfigRecord({"round": rnd})
        local = ", ".join(f"{k} {v:.4g}" for k, v in update.metrics.items())
        print(f"client {self.client_id}, round {rnd + 1}: {local}", flush=True)  # its log
        return update

    def require_metrics(self, what: str) -> None:
        """Refuse metrics computed on the site's data unless the policy releases them (they
        are not DP: a crafted head or model turns them into the site's class counts)."""
        if not self.policy.release_metrics:
            self.refuse(f"{what} are not released (release-metrics=false)")

    def reply(self, msg: Message, records: dict) -> Message:
        records = {"client": MetricRecord({"id": self.client_id}), **records}
        return Message(RecordDict(records), reply_to=msg)


def fit_round(client: SiteClient, weights: StateDict, rnd: int, device: str) -> ClientUpdate:
    """One local round. A DP-CVAE / DP-CGAN client on CPU trains on one torch thread, as in
    main.py's per-client path (train_generative): threads inside one small client wait on each
    other at every operation, slowly when other processes (every site of the round, on a
    shared machine) hold the cores."""
    if isinstance(client, DPClient) and device == "cpu":
        with one_torch_thread():
            return client.fit(weights, rnd)
    return client.fit(weights, rnd)


def site_ledger(node_config: dict, database_root: str, fingerprint: str, client_id: int) -> Ledger:
    """The ledger of this site's dataset: `ledger-dir` / `dataset-id` (a deployment must set
    both; it must have been initialised). A node of Flower's simulation engine (`partition-id`:
    the researcher's own, PERMISSIVE) gets one next to the database, initialised with no
    limit, as main.py has none."""
    if "client-id" in node_config or "partition-id" not in node_config:
        return Ledger(node_config["ledger-dir"], node_config["dataset-id"], client_id)
    root = Path(database_root).resolve()
    ledger = Ledger(root.parent / "ledger", f"{fingerprint[:16]}-client{client_id}", client_id)
    ledger.initialise(math.inf, 1.0, exist_ok=True)
    return ledger


def node_policy_config(node_config: dict) -> dict:
    """The node config the site's policy is read from: as given for a SuperNode (`client-id`),
    on top of `PERMISSIVE` under Flower's simulation engine (`partition-id` only), whose
    simulated nodes all belong to the researcher who runs it."""
    if "client-id" in node_config or "partition-id" not in node_config:
        return dict(node_config)
    return {**PERMISSIVE, **node_config}


def site_key(database_root: str, node_config: dict) -> bytes:
    """This site's secret for keying what it reports of its data: node config `site-secret`,
    else the file SITE_KEY_FILE next to its database, created once from OS entropy (mode 0600).
    It never leaves the site."""
    if "site-secret" in node_config:
        return str(node_config["site-secret"]).encode()
    path = Path(database_root) / SITE_KEY_FILE
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this site made it first
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
    return path.read_bytes()


def keyed_fingerprint(key: bytes, fingerprint: str) -> str:
    """HMAC-SHA256 of the database fingerprint under the site's key: stable for one site (the
    coordinator can check that a site's data did not change between runs), but not the
    unsalted hash of the labels, which a coordinator could confirm by guessing them."""
    return hmac.new(key, fingerprint.encode(), hashlib.sha256).hexdigest()
