"""The Flower ServerApp: main.py's federation loop (`run_rounds`) and FedAvg step
(`fedavg_aggregate`), with each round's local training done by the sites' ClientApps.

It opens no database and no split file: the run's public facts (number of sites from the run
config; embedding size, classes, and the names and hashes of each site's data from the sites'
first replies) are all it needs. It writes the same config.json, history.csv and metrics.json as
main.py (the run lifecycle of algorithms/experiment.py), and sees of each site only what the
ClientApp sends back (see fl/client_app.py). A site whose policy refuses the run stops it at
the start, with one message naming the site and the rule. The end of a generative run is the
library's: the sites run `finish_client` and report, the server runs `choose_lambda`, the sites
compute their test rows. No site sends a record count (fl/client_app.py): the results'
client rows have none (`counts`: "absent (deployment)"), their summary no test-size-weighted
mean, and the global synthetic-only accuracy is the mean of the sites' own (each site trains
that head from the global model), not main.py's pooled one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from algorithms.evaluation.downstream import (
    JOINT_WEIGHTS,
    choose_modes,
    evaluation_of,
    modes_report,
)
from algorithms.evaluation.protocol import Evaluation, Outcome, lambda_grid
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate, Rounds, fedavg_aggregate, run_rounds
from algorithms.methods.fedavg import initial_head, validation_row
from algorithms.methods.fedpft import pft_outcome
from algorithms.methods.generative import count_parameters, initial_global_weights
from algorithms.methods.generative_run import dpsgd_privacy_report, generative_outcome
from algorithms.methods.pft_server import pooler
from algorithms.methods.registry import required
from algorithms.methods.synthesis import GLOBAL_SYNTHETIC_PER_CLASS
from algorithms.options import Settings
from algorithms.privacy.accounting import privacy_report
from algorithms.run_files import DataFacts, close_run, discard_unfinished, open_run
from fl.charge import is_secure
from fl.records import (
    WITHHELD,
    as_float,
    content_update,
    record_float,
    record_floats,
    weights_record,
)
from fl.secure_rounds import secure_train_rounds
from fl.settings import SettingsError, is_generative, is_pft, run_settings, run_sites
from fl.sites import Sites, connect
from utils.metrics import CLASSIFICATION_METRICS
from utils.progress import set_quiet
from utils.seeding import SAMPLING, derive_seed

app = ServerApp()

T = TypeVar("T")

ROW_KEYS = ("id", *(f"test_{m}" for m in CLASSIFICATION_METRICS))  # no counts: none is sent


@app.main()
def serve(grid: Grid, context: Context) -> None:
    """Run main.py's experiment with the sites' ClientApps and write its results files."""
    set_quiet(True)
    settings = run_settings(context.run_config)
    n_sites = run_sites(context.run_config, settings)
    sites, hello = connect(
        grid,
        n_sites,
        float(context.run_config.get("node-timeout-s", 600)),
        float(context.run_config.get("reply-timeout-s", 3600)),
    )
    order = sorted(hello)  # client index -> client id, as main.py (split files list ids in order)
    facts, dim, n_classes = run_facts(settings, hello, order)
    files = open_run(settings, facts)
    if files.finished:
        return
    start = time.perf_counter()
    run = run_pft if is_pft(settings) else run_generative if is_generative(settings) else run_fedavg
    try:
        outcome, evaluation = run(sites, order, settings, dim, n_classes)
    except BaseException:  # a refused or failed run leaves nothing half-written behind
        discard_unfinished(files.run_dir, remove_folder=True)
        raise
    wall = time.perf_counter() - start
    close_run(
        run=files,
        seed=settings.seed,
        split_args=facts.split_args,
        evaluation=evaluation,
        outcome=outcome,
        wall=wall,
    )


def run_facts(
    settings: Settings, hello: dict[int, dict], order: list[int]
) -> tuple[DataFacts, int, int]:
    """The run's data facts from the sites' replies (a fact they share is one value, one they
    differ on a list in client order), the embedding size and the number of classes, which
    every site must agree on. Sites reading one split file must have made it with main-args'
    partition flags."""

    def common(values: list) -> Any:
        return values if any(v != values[0] for v in values) else values[0]

    def agreed(name: str, key: Callable[[dict], T]) -> T:
        values = {cid: key(h) for cid, h in hello.items()}
        if len(set(map(json.dumps, values.values()))) != 1:
            raise SettingsError(f"the sites disagree on the {name}: {values}")
        return values[order[0]]

    dim = int(agreed("embedding size", lambda h: int(h["dim"])))
    n_classes = int(agreed("number of classes", lambda h: int(h["n_classes"])))
    dataset = str(agreed("dataset", lambda h: h["facts"]["dataset"]))
    backbone = str(agreed("backbone", lambda h: h["facts"]["backbone"]))
    each = {name: [hello[cid]["facts"][name] for cid in order] for name in hello[order[0]]["facts"]}
    split_args = common(each["split_args"])
    facts = DataFacts(
        dataset,
        backbone,
        common(each["fingerprint"]),
        common(each["split_file"]),
        common(each["split_sha256"]),
        split_args if isinstance(split_args, dict) else {"sites": split_args},
    )
    expected = asdict(settings.configs.split)
    shared = "sites" not in facts.split_args and facts.split_args.get("split_method") != "site"
    if shared and facts.split_args != expected:
        raise SettingsError(
            f"the sites' split was made with other arguments ({facts.split_args}), not "
            f"{expected}: pass its partition flags in main-args"
        )
    return facts, dim, n_classes


def train_rounds(
    *,
    sites: Sites,
    order: list[int],
    initial: StateDict,
    n_rounds: int,
    sampling_rate: float,
    settings: Settings,
    on_round: Callable | None = None,
    aggregate: Callable[[Sequence[ClientUpdate]], StateDict] = fedavg_aggregate,
) -> tuple[StateDict, list[dict]]:
    """main.py's rounds (same sampling seed and aggregation); each chosen site trains locally.

    Args:
        sites: the connected sites.
        order: client index -> client id.
        initial: the global weights of round 1.
        n_rounds: how many rounds.
        sampling_rate: the share of sites chosen each round.
        settings: the run's settings (its seed and method).
        on_round: called after each round's aggregation (FedAvg's validation), or None.
        aggregate: the server step (FedAvg's weighted mean, or FedPFT's pooling).
    """

    def fit_round(chosen: Sequence[int], weights: StateDict, rnd: int) -> list[ClientUpdate]:
        record = weights_record(weights)
        config = ConfigRecord({"round": rnd})
        replies = sites.ask(
            [order[i] for i in chosen],
            "train",
            lambda cid: RecordDict({"weights": record, "config": config}),
            group=f"round {rnd + 1}",
        )
        updates = []
        for i in chosen:
            cid, update = content_update(replies[order[i]])
            if cid != order[i]:
                raise RuntimeError(f"round {rnd + 1}: client {order[i]} replied as client {cid}")
            updates.append(update)
        return updates

    seed = derive_seed(settings.seed, SAMPLING)
    rounds = Rounds(
        n_rounds, aggregate, sampling_rate, seed, on_round=on_round, desc=settings.method.name
    )
    return run_rounds(len(order), fit_round, initial, rounds)


def run_generative(
    sites: Sites, order: list[int], settings: Settings, dim: int, n_classes: int
) -> tuple[Outcome, Evaluation]:
    """DP-CVAE / DP-CGAN: the rounds, then the end of a generative run (`finish_sites`)."""
    method, seed = settings.method.name, settings.seed
    cfg = required(settings.configs.generative, "generative")
    dp = required(settings.configs.dp, "dp")
    initial = initial_global_weights(method, dim, n_classes, cfg, seed)
    if is_secure(settings):  # SecAgg+ carries each round's sum (fl/secure_rounds.py)
        weights, history = secure_train_rounds(sites, order, initial, settings, (dim, n_classes))
    else:
        weights, history = train_rounds(
            sites=sites,
            order=order,
            initial=initial,
            n_rounds=cfg.n_rounds,
            sampling_rate=1.0,
            settings=settings,
        )
    fidelity, privacy, global_synthetic, evaluation = finish_sites(
        sites, order, settings, weights, n_classes
    )
    params = count_parameters(method, dim, n_classes, cfg)
    privacy_block = dpsgd_privacy_report(dp, cfg, privacy)
    outcome = generative_outcome(
        params=params,
        cfg=cfg,
        history=history,
        fidelity=fidelity,
        privacy=privacy_block,
        global_synthetic=global_synthetic,
    )
    return outcome, evaluation


def run_pft(
    sites: Sites, order: list[int], settings: Settings, dim: int, n_classes: int
) -> tuple[Outcome, Evaluation]:
    """FedPFT / DP-FedPFT: one round (each site releases its statistics once, the server pools
    them), then the end of a generative run from the pooled Gaussians."""
    method, configs = settings.method.name, settings.configs
    cfg, gen = required(configs.pft, "pft"), required(configs.generative, "generative")
    dp = configs.dp
    if is_secure(settings):  # SecAgg+ carries the sum of the releases (fl/secure_rounds.py)
        pooled, history = secure_train_rounds(sites, order, {}, settings, (dim, n_classes))
    else:
        pooled, history = train_rounds(
            sites=sites,
            order=order,
            initial={},
            n_rounds=1,
            sampling_rate=1.0,
            settings=settings,
            aggregate=pooler(method, cfg, dp),
        )
    fidelity, privacy, global_synthetic, evaluation = finish_sites(
        sites, order, settings, pooled, n_classes
    )
    outcome = pft_outcome(
        method=method,
        dim=dim,
        n_classes=n_classes,
        cfg=cfg,
        gen_cfg=gen,
        dp=dp,
        history=history,
        fidelity=fidelity,
        privacy=privacy,
        global_synthetic=global_synthetic,
    )
    return outcome, evaluation


def finish_sites(
    sites: Sites,
    order: list[int],
    settings: Settings,
    weights: StateDict,
    n_classes: int,
) -> tuple[list[dict], list[dict], dict | None, Evaluation]:
    """The end of a generative run: each site runs `finish_client` from the global `weights`
    and reports its lambda-grid validation scores, fidelity and privacy line, and trains the
    global synthetic-only head from `weights` itself; the server chooses lambda under every
    lambda metric; each site reports its test rows at those lambdas and its global synthetic
    head's test accuracy. Returns (fidelity,
    privacy lines, the global synthetic-only accuracy, the evaluation)."""
    record = weights_record(weights)
    done = sites.ask(
        order, "evaluate.synthesize", lambda cid: RecordDict({"weights": record}), "end"
    )
    privacy = [privacy_line(cid, done[cid]) for cid in order]
    withheld = [cid for cid in order if WITHHELD in done[cid].config_records]
    if withheld:  # a site's policy keeps its metrics: the run reports its privacy only
        kept = f"clients {withheld} keep their metrics (release-metrics=false)"
        return [{} for _ in order], privacy, None, Evaluation([], withheld=kept)
    per_client, fidelity = [], []
    for cid in order:
        reply = done[cid]
        per_client.append(mode_scores(reply.metric_records["lambda"]))
        fidelity.append({k: as_float(v, k) for k, v in reply.metric_records["fidelity"].items()})
    grid = lambda_grid(settings.args.weights_grid_resolution)
    chosen = choose_modes(per_client, grid, JOINT_WEIGHTS)
    config = ConfigRecord(
        {f"{mode}-{m}": v for mode, pm in chosen.items() for m, (v, _) in pm.items()}
    )
    replies = sites.ask(order, "evaluate", lambda cid: RecordDict({"config": config}), group="test")
    rows = {
        mode: {m: [row_of(replies[cid], f"row-{mode}-{m}") for cid in order] for m in pm}
        for mode, pm in chosen.items()
    }
    accs = [record_float(replies[cid].metric_records["synthetic"], "global_acc") for cid in order]
    global_synthetic = site_global_synthetic_report(accs, n_classes)
    evaluation = evaluation_of(
        modes_report(chosen, rows), settings.args.lambda_metric, downstream_of(settings)
    )
    return fidelity, privacy, global_synthetic, evaluation


def run_fedavg(
    sites: Sites, order: list[int], settings: Settings, dim: int, n_classes: int
) -> tuple[Outcome, Evaluation]:
    """FedAvg / FedProx on a linear head: the rounds with each round's validation accuracy
    (reported by the sites), then each site's test metrics of the final global head."""
    cfg, seed = required(settings.configs.fedavg, "fedavg"), settings.seed

    def validate(rnd: int, weights: StateDict, updates: Sequence[ClientUpdate]) -> dict:
        record = weights_record(weights)
        replies = sites.ask(
            order,
            "evaluate.validate",
            lambda cid: RecordDict({"weights": record}),
            group=f"round {rnd + 1}",
        )
        accs = [replies[cid].metric_records["val"].get("acc") for cid in order]
        return validation_row(cfg, rnd, [None if a is None else as_float(a, "acc") for a in accs])

    initial = initial_head(dim, n_classes, seed)
    weights, history = train_rounds(
        sites=sites,
        order=order,
        initial=initial,
        n_rounds=cfg.n_rounds,
        sampling_rate=cfg.sampling_rate,
        settings=settings,
        on_round=validate,
    )
    record = weights_record(weights)
    replies = sites.ask(order, "evaluate", lambda cid: RecordDict({"weights": record}), "test")
    rows = [row_of(replies[cid], "row") for cid in order]
    params = sum(v.numel() for v in weights.values())
    privacy = None
    if settings.configs.dp is not None:  # a DP-SGD head (dpfedavg): each site's accounting
        lines = [privacy_line(cid, replies[cid]) for cid in order]
        privacy = privacy_report(settings.configs.dp, lines)
    outcome = Outcome(None, None, history, params_shared=params, privacy=privacy)
    return outcome, Evaluation(rows)


def privacy_line(cid: int, reply: RecordDict) -> dict:
    """A site's line of the privacy report, from its reply's `privacy` record."""
    return {"id": cid, **json.loads(str(reply.config_records["privacy"]["json"]))}


def mode_scores(record: MetricRecord) -> dict[str, dict[str, list[float]]] | None:
    """A site's validation scores, {mode: {metric: [per grid value]}}, from its record's keys
    `mode-metric` (None: the site has no validation data)."""
    if not record:
        return None
    out: dict[str, dict[str, list[float]]] = {}
    for key in record:
        mode, metric = str(key).split("-", 1)
        out.setdefault(mode, {})[metric] = record_floats(record, key)
    return out


def downstream_of(settings: Settings) -> str:
    """The run's headline downstream mode (--downstream)."""
    return getattr(settings.args, "downstream", "mix")


def site_global_synthetic_report(accs: list[float], n_classes: int) -> dict:
    """The global synthetic-only accuracy of a deployment: the mean of the sites' accuracies
    (their test sizes are not sent, so main.py's pooled accuracy cannot be formed), against
    chance 1 / n_classes; `at_chance` (a test on the pooled size) is None."""
    return {
        "acc": sum(accs) / len(accs) if accs else float("nan"),
        "mean_of": "sites (no test sizes are sent)",
        "chance": 1.0 / n_classes,
        "per_class": GLOBAL_SYNTHETIC_PER_CLASS,
        "at_chance": None,
    }


def row_of(reply: RecordDict, name: str) -> dict:
    """A site's line of metrics.json from its reply's metric record `name`."""
    row = reply.metric_records[name]
    return {k: row[k] for k in ROW_KEYS if k in row}
