"""A Flower site for one message: its settings, data, privacy policy and ledger, its secret
key, and its client object restored from Context.state."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
import secrets
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from algorithms.methods.fedavg import FedAvgClient, make_fedavg_clients
from algorithms.methods.fedpft import PFTClient, make_pft_clients
from algorithms.methods.generative import make_clients
from algorithms.options import Settings
from algorithms.privacy.accounting import remember_calibration
from algorithms.privacy.dp_client import DPClient
from fl.ledger import Claim, site_ledger
from fl.policy import PERMISSIVE, Refusal, policy_violation, site_policy
from fl.records import load_state
from fl.settings import (
    is_generative,
    is_pft,
    load_client,
    node_client_id,
    node_paths,
    run_settings,
)
from utils.cli import flag_name
from utils.progress import set_quiet
from utils.seeding import new_secret

STATE = "client"  # the client object's state_dict() in Context.state


LAST_ROUND = "last-round"  # the last round this client trained (refuses replays)


SECRET = "secret"  # the key of this site's private randomness (secure noise)


ANSWERED = "answered"  # the end-of-run steps this site has answered (each once per run)


CALIBRATION = "calibration"  # the client's noise multiplier and what it was calibrated from


SITE_KEY_FILE = ".site_key"  # next to the site's database: its secret for the fingerprint


class Site:
    """This node's settings, client id, policy and data for one message."""

    def __init__(self, context: Context):
        set_quiet(True)
        self.settings: Settings = run_settings(context.run_config)
        self.client_id = node_client_id(context.node_config)
        self.policy = site_policy(node_policy_config(context.node_config))
        root, split = node_paths(context.node_config, self.settings)
        self.data, self.n_classes, self.facts = load_client(root, split, self.client_id)
        self.violation = policy_violation(self.policy, self.settings, len(self.data.y_train))
        self.root = root
        self.context = context
        self.ledger = site_ledger(context.node_config, root, self.client_id, self.policy)

    def refuse(self, rule: str) -> None:
        raise Refusal(f"client {self.client_id}'s site refuses: {rule}")

    def require_policy(self) -> None:
        """Refuse any message of a run that breaks the site's policy."""
        if self.violation:
            self.refuse(self.violation)

    def n_rounds(self) -> int:
        """The rounds this run's noise is calibrated for (the run's last round)."""
        s = self.settings
        if is_pft(s):
            return 1
        return (s.configs.generative if is_generative(s) else s.configs.fedavg).n_rounds

    def last_round(self) -> int | None:
        if LAST_ROUND not in self.context.state:
            return None
        return int(self.context.state.config_records[LAST_ROUND]["round"])

    def claim(self, key: str, what: str) -> None:
        """Claim a release of this run in the site's ledger (fl/ledger.py), before computing
        it: refused if it was claimed before, by an overlapping message or an earlier process."""
        self.ledger.claim(self.context.run_id, [Claim(key, what)])

    def claim_round(self, rnd: int) -> None:
        """Claim a train round (with the run's epsilon and delta at its first claim: the noise
        is calibrated for the whole run), refused if claimed or over the dataset's budget."""
        dp, private = self.settings.configs.dp, self.settings.method.private
        eps, delta = (
            (None, 0.0) if dp is None or not dp.enabled or not private else (dp.epsilon, dp.delta)
        )
        if eps is not None and dp.calibration != "total" and math.isfinite(self.ledger.budget[0]):
            self.refuse(
                f"{flag_name(dp, 'calibration')} {dp.calibration} spends more than the ledger "
                "can count"
            )
        what = "the one release" if is_pft(self.settings) else f"train round {rnd + 1}"
        run = "run's privacy (target epsilon, delta)" if eps is not None else "run without DP"
        claims = [Claim("run", run, eps, delta, once=False)]
        if eps is not None and dp.count_noise:
            claims.append(Claim("count", "noisy record count (in the run's epsilon)", once=False))
        self.ledger.claim(self.context.run_id, [*claims, Claim(f"train {rnd}", what)])

    def answer_once(self, step: str) -> None:
        """Mark an end-of-run step as answered; refuse it if it already was in this run."""
        state = self.context.state
        done = dict(state.config_records[ANSWERED]) if ANSWERED in state else {}
        if done.get(step):
            self.refuse(f"{step} was already answered in this run (once per run)")
        self.claim(step, f"end-of-run {step}")  # the ledger: overlapping or restarted tasks
        state[ANSWERED] = ConfigRecord({**done, step: True})

    def secret(self) -> bytes | None:
        """The site's key for secure noise, drawn once per run from OS entropy and kept in
        Context.state; None when the policy's noise source is seeded."""
        if self.policy.noise_source != "secure":
            return None
        state = self.context.state
        if SECRET not in state:
            state[SECRET] = ConfigRecord({"key": new_secret()})
        return bytes(state.config_records[SECRET]["key"])

    def client(self) -> DPClient | PFTClient | FedAvgClient:
        """The client object, restored to where the last message left it."""
        s = self.settings
        state = self.context.state
        if CALIBRATION in state:  # this run's noise multiplier, found by an earlier message
            known = state.config_records[CALIBRATION]
            remember_calibration(str(known["key"]), float(known["noise-multiplier"]))
        if is_pft(s):
            pft, gen, dp = s.configs.pft, s.configs.generative, s.configs.dp
            if dp is not None:
                dp = dataclasses.replace(dp, noise_source=self.policy.noise_source)
            client = make_pft_clients(
                method=s.method.name,
                clients=[self.data],
                n_classes=self.n_classes,
                cfg=pft,
                gen_cfg=gen,
                dp=dp,
                seed=s.seed,
                secret=self.secret(),
            )[0]
        elif is_generative(s):
            gen = s.configs.generative
            dp = dataclasses.replace(s.configs.dp, noise_source=self.policy.noise_source)
            client = make_clients(
                method=s.method.name,
                clients=[self.data],
                n_classes=self.n_classes,
                cfg=gen,
                dp=dp,
                seed=s.seed,
                secret=self.secret(),
                device=s.execution.device,
            )[0]
        else:
            cfg, device = s.configs.fedavg, s.execution.device
            client = make_fedavg_clients([self.data], self.n_classes, cfg, s.seed, device)[0]
        calibration = getattr(client, "calibration", None)  # DP-SGD clients only
        if calibration is not None:
            key, sigma = calibration
            state[CALIBRATION] = ConfigRecord({"key": key, "noise-multiplier": sigma})
        stored = load_state(state, STATE)
        if stored is not None:
            client.load_state_dict(stored)
        return client

    def require_metrics(self, what: str) -> None:
        """Refuse metrics computed on a head the coordinator sends, unless the policy releases
        them (a crafted head's accuracy reveals the site's class counts)."""
        if not self.policy.release_metrics:
            self.refuse(f"{what} of a head the coordinator sends (release-metrics=false)")

    def reply(self, msg: Message, records: dict) -> Message:
        records = {"client": MetricRecord({"id": self.client_id}), **records}
        return Message(RecordDict(records), reply_to=msg)


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
