"""The Flower ClientApp: one site's side of the federation, with the same client objects and
end-of-run functions as main.py (algorithms/methods/: generative.py, synthesis.py, fedavg.py,
fedpft.py; algorithms/evaluation/), under the site's own privacy policy (fl/policy.py).

Each message runs in a fresh process (deployment) or in a shared worker (simulation), so the
client object is rebuilt from its seed and its secret key and restored from the node's
Context.state, which holds its whole state (model, optimizer, RNG states, accountant history,
the secret key of its noise, the noise multiplier its first message calibrated: the PRV search
runs once per run, not once per message) and never leaves the site. Every release is first
claimed in the site's privacy ledger on disk (fl/ledger.py): Context.state is a snapshot per
task, so it alone cannot refuse overlapping or restarted replays, nor count runs.

Messages (what comes back is all that leaves the site):
- query: the client id, the embedding size, the number of classes and the names and hashes of
  its data (DataFacts; the database fingerprint and split file sha256 keyed with the site's
  secret, `fl.site.site_key`), or
  the site's refusal of the run (the rule of its policy it breaks);
- train: one local round from the global weights -> shared weights, the noisy record count
  (the FedAvg weight) and the epsilon spent so far (the train loss is only printed to the
  site's log); refused beyond the rounds the noise is calibrated for; fedpft, dpfedpft: the
  site's one release (its sample count sent as 0), refused if asked again;
- evaluate.validate (fedavg, fedprox, dpfedavg): the global head's validation accuracy, only under
  `release-metrics=true` (else refused: a crafted head is an oracle of the class counts);
- evaluate.synthesize (dpcvae, dpcgan, fedpft, dpfedpft; once, after the last round): the
  client's privacy accounting; and, only under `release-metrics=true`, synthesize from the
  global model (or the pooled Gaussians) and fit the two heads, locally -> the validation
  accuracy and balanced accuracy of every downstream mode's grid, the fidelity of the
  synthetic data (if `release-fidelity`), the synthetic head's test accuracy; the site also
  trains, here, the global synthetic-only head from the global model (run seed, as main.py's
  server does). Under the default policy the reply says the metrics are withheld;
- evaluate (once, only under `release-metrics=true`): test metrics, of the global head
  (fedavg; dpfedavg adds its privacy accounting) or of the mix at the lambda chosen under
  each lambda metric, with the test accuracy of the site's global synthetic-only head (no head
  the coordinator sends).

Every handler is `guarded`: an error on the data path becomes one refusal whose text does not
depend on the data (the details stay in the site's log).
No reply holds a record count in the clear (n_train, n_val, n_test, per-class counts): the
only count that leaves is DP-SGD's noisy FedAvg weight. Accuracies are ratios of counts; what
they still reveal is listed in privacy.NOT_COVERED.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import traceback
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from algorithms.evaluation.downstream import (
    JOINT_WEIGHTS,
    MODES,
    client_mode_rows,
    client_mode_scores,
    mode_values,
)
from algorithms.evaluation.heads import new_head, predict_proba
from algorithms.evaluation.protocol import LAMBDA_METRICS, ClientProbs, client_test_row, lambda_grid
from algorithms.methods.fedavg import val_accuracy
from algorithms.methods.generative_run import ReleasedSampler
from algorithms.methods.pft_server import PooledSampler
from algorithms.methods.registry import required
from algorithms.methods.synthesis import correct_count, finish_client, global_synthetic_head
from data.clients import ClientData
from data.database import encoder_facts, load_meta
from fl.charge import is_secure
from fl.policy import PolicyError, Refusal
from fl.records import (
    SECURE_ACTION,
    WITHHELD,
    metric_record,
    record_float,
    record_int,
    record_weights,
    update_content,
)
from fl.secure_site import secure_mod, secure_train
from fl.settings import is_generative, is_pft
from fl.site import Site, keyed_fingerprint, site_key

app = ClientApp()


def guarded(
    handler: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    """One uniform refusal for every error on the site's data path: its text names the message,
    never the error, a path or a value of the data (the details go to the site's log only), so
    a crafted message cannot learn a bit from how it fails. Refusals and node-config errors
    pass as they are (they name a rule or a key)."""

    @functools.wraps(handler)
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (Refusal, PolicyError):
            raise
        except Exception:
            traceback.print_exc()  # the site's log
            who = context.node_config.get("client-id", context.node_config.get("partition-id"))
            raise Refusal(
                f"client {who}'s site could not answer {msg.metadata.message_type} "
                "(the reason is in its log)"
            ) from None

    return run


TEST_PROBS = "test-probs"  # the heads' test probabilities and priors, kept for the server's choice
GLOBAL_ACC = "global-acc"  # the test accuracy of the site's global synthetic-only head
COUNT_KEYS = ("n_train", "n_val", "n_test")  # never sent: the exact split sizes


@app.query()
@guarded
def hello(msg: Message, context: Context) -> Message:
    """Who this site is: its client id, the shapes the server needs and the names and hashes of
    its data (no data), and the unit the run protects and its ledger counts (patient or
    record); or its refusal of the run, naming the rule of its policy or ledger (free: nothing
    is claimed, and no rule reads the records)."""
    site = Site(context)
    refusal = site.refusal()
    info = {
        "id": site.client_id,
        "dim": int(site.data.x_train.shape[1]),
        "n_classes": site.n_classes,
    }
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {"client": metric_record(info)}
    # what the run protects here and what the site's budget counts: units, never a count
    records["unit"] = ConfigRecord({"protects": site.unit, "ledger": site.ledger_unit})
    if refusal:
        records["refusal"] = ConfigRecord({"rule": refusal})
    else:
        key = site_key(site.root, site.context.node_config)
        facts = dataclasses.asdict(site.facts)
        facts["fingerprint"] = keyed_fingerprint(key, str(site.facts.fingerprint))
        # the split file holds its per-class counts: its plain sha256 would confirm a guess too
        facts["split_sha256"] = keyed_fingerprint(key, str(site.facts.split_sha256))
        records["facts"] = ConfigRecord({k: json.dumps(v) for k, v in facts.items()})
        encoder = encoder_facts(load_meta(site.root))  # how its embeddings were made
        records["encoder"] = ConfigRecord({"facts": json.dumps(encoder)})
    return Message(RecordDict(records), reply_to=msg)


@app.train()
@guarded
def train(msg: Message, context: Context) -> Message:
    """One local round from the global weights; the client's state stays in Context.state.
    Refused beyond the run's rounds (the noise is calibrated for them) and for a round that is
    not after the last one trained."""
    site = Site(context)
    site.require_policy()
    if is_secure(site.settings):  # its residues in the clear would carry a share of the noise
        site.refuse("this run's rounds go through secure aggregation (train.secure) only")
    rnd = record_int(msg.content.config_records["config"], "round")
    weights = record_weights(msg.content.array_records["weights"])
    update = site.train_round(weights, rnd)
    return Message(update_content(site.client_id, update), reply_to=msg)


# A secure round (--secure_aggregation): SecAgg+ messages of type train.secure (fl/secure_site.py)
app.train(SECURE_ACTION, mods=[secure_mod])(guarded(secure_train))


@app.evaluate("validate")
@guarded
def validate(msg: Message, context: Context) -> Message:
    """FedAvg's per-round check: the global head's accuracy on this site's validation set."""
    site = Site(context)
    site.require_policy()
    site.require_metrics("validation accuracies")
    answered = len(site.ledger.claimed(context.run_id, "validate "))  # whatever the group id
    if answered >= site.n_rounds():
        site.refuse(f"validation is answered once per round ({site.n_rounds()} rounds)")
    site.claim(f"validate {answered}", f"validation {answered + 1}")
    head = _head(site.data, site.n_classes, msg.content.array_records["weights"])
    acc = val_accuracy(head, site.data)
    return site.reply(msg, {"val": MetricRecord({} if acc is None else {"acc": acc})})


@app.evaluate("synthesize")
@guarded
def synthesize(msg: Message, context: Context) -> Message:
    """After the last round, once: synthesize from the global model and fit the heads, here;
    report the lambda-protocol validation accuracies, fidelity (if the policy allows) and
    privacy accounting."""
    site = Site(context)
    site.require_policy()
    if site.last_round() != site.n_rounds() - 1:
        site.refuse(f"the end-of-run evaluation comes after round {site.n_rounds()}, its last")
    site.answer_once("evaluate.synthesize")
    s = site.settings
    client = site.client()
    privacy = {k: v for k, v in client.privacy().items() if k != "id"}
    if not site.policy.release_metrics:  # every metric computed on the site's data stays here
        return site.reply(
            msg,
            {
                "privacy": ConfigRecord({"json": json.dumps(privacy)}),
                WITHHELD: ConfigRecord({"rule": "release-metrics=false"}),
            },
        )
    weights = record_weights(msg.content.array_records["weights"])
    gen, head_cfg = required(s.configs.generative, "generative"), required(s.configs.head, "head")
    result = finish_client(
        client=client,
        data=site.data,
        weights=weights,
        n_classes=site.n_classes,
        cfg=gen,
        head_cfg=head_cfg,
        seed=s.seed,
    )
    context.state[TEST_PROBS] = ArrayRecord(
        kept_test_probs(result.local, result.global_, result.joint)
    )
    # the global synthetic-only head, trained here from the global model as main.py's server
    # trains it: the coordinator sends no head to test on this site's data
    sampler = (
        PooledSampler(gen.squash_temperature)
        if is_pft(s)
        else ReleasedSampler(s.method.name, site.data.x_train.shape[1], site.n_classes, gen)
    )
    head = global_synthetic_head(
        sampler=sampler,
        weights=weights,
        n_classes=site.n_classes,
        cfg=gen,
        head_cfg=head_cfg,
        seed=s.seed,
    )
    n_test = len(site.data.y_test)
    correct = correct_count(head, site.data)  # None: an empty synthetic set, no head
    acc = correct / n_test if n_test and correct is not None else float("nan")
    context.state[GLOBAL_ACC] = ConfigRecord({"acc": acc})
    grid = lambda_grid(s.args.weights_grid_resolution)
    scores = client_mode_scores(result.local, result.global_, result.joint, site.data.y_val, grid)
    flat = {f"{mode}-{m}": v for mode, per in (scores or {}).items() for m, v in per.items()}
    fidelity = {k: v for k, v in result.fidelity().items() if k not in COUNT_KEYS}
    if not site.policy.release_fidelity:  # the statistics on training data stay here
        fidelity = {k: fidelity[k] for k in ("synthetic_acc", "majority")}
    return site.reply(
        msg,
        {
            "lambda": metric_record(flat),
            "fidelity": metric_record(fidelity),
            "privacy": ConfigRecord({"json": json.dumps(privacy)}),
        },
    )


@app.evaluate()
@guarded
def report(msg: Message, context: Context) -> Message:
    """This site's test metrics: of the global head (fedavg, under release-metrics=true), or of
    the mix at the lambdas the server chose from the validation scores (the generative
    methods), with the test accuracy of the global synthetic-only head the site trained at the
    end-of-run evaluation. No record count. Once per run."""
    site = Site(context)
    site.require_policy()
    site.require_metrics("test metrics")
    if is_generative(site.settings) and TEST_PROBS not in context.state:
        site.refuse("test metrics asked before the end-of-run evaluation")
    site.answer_once("evaluate")
    if not is_generative(site.settings):
        head = _head(site.data, site.n_classes, msg.content.array_records["weights"])
        row = client_test_row(site.data, None, predict_proba(head, site.data.x_test), None)
        records: dict = {"row": MetricRecord(uncounted(row))}
        if site.settings.configs.dp is not None:  # a DP-SGD head (dpfedavg): its accounting
            privacy = {k: v for k, v in site.client().privacy().items() if k != "id"}
            records["privacy"] = ConfigRecord({"json": json.dumps(privacy)})
        return site.reply(msg, records)
    local, global_, joint = restore_test_probs(context.state.array_records[TEST_PROBS])
    config = msg.content.config_records["config"]
    grid = lambda_grid(site.settings.args.weights_grid_resolution)
    chosen = chosen_values(site, config, grid)
    rows = client_mode_rows(
        c=site.data,
        local=local,
        global_=global_,
        joint=joint,
        chosen=chosen,
        grid=grid,
        joint_values=JOINT_WEIGHTS,
    )
    records = {
        f"row-{mode}-{m}": MetricRecord(uncounted(row))
        for mode, per in rows.items()
        for m, row in per.items()
    }
    synthetic = {"global_acc": record_float(context.state.config_records[GLOBAL_ACC], "acc")}
    return site.reply(msg, {**records, "synthetic": metric_record(synthetic)})


def kept_test_probs(
    local: ClientProbs, global_: ClientProbs, joint: dict[float, ClientProbs]
) -> list[np.ndarray]:
    """What a site keeps between its end-of-run evaluation and its test report: the local and
    global heads' test probabilities and label priors, and each joint head's test
    probabilities (JOINT_WEIGHTS order)."""
    if local.prior is None or global_.prior is None:
        raise ValueError("the heads' label priors are missing: the test report needs them")
    return [local.test, global_.test, local.prior, global_.prior] + [
        joint[w].test for w in JOINT_WEIGHTS
    ]


def restore_test_probs(
    record: ArrayRecord,
) -> tuple[ClientProbs, ClientProbs, dict[float, ClientProbs]]:
    """`kept_test_probs` back as the heads' test probabilities (no validation data needed)."""
    local_test, global_test, local_prior, global_prior, *joint = record.to_numpy_ndarrays()
    empty = np.zeros((0, local_test.shape[1]))
    local = ClientProbs(empty, local_test, None, local_prior)
    global_ = ClientProbs(empty, global_test, None, global_prior)
    return local, global_, {w: ClientProbs(empty, p) for w, p in zip(JOINT_WEIGHTS, joint)}


def chosen_values(
    site: Site, config: ConfigRecord, grid: np.ndarray
) -> dict[str, dict[str, float]]:
    """The values the server chose, {mode: {metric: value}}, from config keys `mode-metric`;
    a missing key, or a value off the mode's grid, is refused."""
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        allowed = [float(v) for v in mode_values(mode, grid, JOINT_WEIGHTS)]
        for m in LAMBDA_METRICS:
            key = f"{mode}-{m}"
            value = config.get(key)
            if not isinstance(value, (int, float)) or float(value) not in allowed:
                site.refuse(f"the test report needs the server's choice {key!r} on its grid")
            out.setdefault(mode, {})[m] = float(value)
    return out


def uncounted(row: dict) -> dict:
    """A test row without the split sizes (they would undo the noisy record count)."""
    return {k: v for k, v in row.items() if k not in COUNT_KEYS}


def _head(data: ClientData, n_classes: int, weights: ArrayRecord) -> torch.nn.Module:
    head = new_head(data.x_train.shape[1], n_classes, 0)
    head.load_state_dict(record_weights(weights))
    return head
