"""Where the lambda mix of a generative run gains and loses, from its synthetic.npz.

    .venv/bin/python experiments/mixing_probe.py RUN_DIR [--database_root DB] [--out probe.json]

RUN_DIR is a finished dpcvae / dpcgan / fedpft / dpfedpft run saved with --save_synthetic. The
probe rebuilds each client's two heads exactly as the run did (same seeds: it first checks that
it reproduces the run's lambda protocol), then prints, for local training and for the mix at the
lambda chosen by each lambda metric:
  - accuracy, balanced accuracy, macro-F1 as the tables report them (sklearn's: over the classes
    in the client's test set or predicted), macro-F1 over the client's test classes only, and
    how many test records were predicted as a class absent from that client's test set (each
    such class adds an F1 of 0 to the client's macro average);
  - two alternatives: lambda chosen per client on its own validation data (not adopted), and
    the synthetic head reweighted to the client's own label prior (Bayes' rule under label
    shift) before mixing (every run now reports it: the `prior` downstream mode).
Nothing here is private-data-safe analysis: it reads the run's real data and is for the researcher
who owns it. It writes the figures as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from algorithms.evaluation.downstream import evaluate_clients, head_probs, label_prior, with_prior
from algorithms.evaluation.heads import HeadConfig, train_head
from algorithms.evaluation.protocol import (
    LAMBDA_METRICS,
    client_val_scores,
    lambda_grid,
    mix,
)
from data.clients import client_datasets
from data.database import load_database
from data.features import unsquash
from data.partition import load_split
from utils.io import write_json
from utils.metrics import classification_metrics
from utils.seeding import LOCAL_HEAD, SYNTHETIC_HEAD, derive_seed


def f1_report(y_test: np.ndarray, pred: np.ndarray) -> tuple[float, float, int]:
    """Macro-F1 as the tables have it, macro-F1 over the test set's own classes, and the number
    of predictions of classes absent from the test set."""
    from sklearn.metrics import f1_score

    own = np.unique(y_test)
    table = f1_score(y_test, pred, average="macro", zero_division=0)
    present = f1_score(y_test, pred, labels=own, average="macro", zero_division=0)
    return float(table), float(present), int((~np.isin(pred, own)).sum())


def summarize(clients, local, global_, lams) -> dict:
    """Mean over clients of the test metrics of the mix at per-client `lams`."""
    rows = []
    for c, lo, gl, lam in zip(clients, local, global_, lams):
        pred = mix(lo.test, gl.test, lam).argmax(1)
        m = classification_metrics(c.y_test, pred)
        f1, f1_present, absent = f1_report(c.y_test, pred)
        assert abs(f1 - m["f1_macro"]) < 1e-12
        rows.append([m["acc"], m["balanced_acc"], f1, f1_present, absent])
    a = np.asarray(rows)
    return {
        "lambda": float(np.mean(lams)),
        "acc": 100 * a[:, 0].mean(),
        "balanced_acc": 100 * a[:, 1].mean(),
        "f1_macro": 100 * a[:, 2].mean(),
        "f1_macro_test_classes": 100 * a[:, 3].mean(),
        "predictions_of_absent_classes": int(a[:, 4].sum()),
    }


def probe(run_dir: Path, database_root: str | None = None) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not (run_dir / "synthetic.npz").is_file():
        raise SystemExit(
            f"error: {run_dir / 'synthetic.npz'} is missing: rerun with --save_synthetic"
        )
    db = load_database(database_root or config["database_root"])
    clients = client_datasets(db, load_split(config["split_file"], db))
    n_classes, seed = db.n_classes, int(config["seed"])
    head_cfg = HeadConfig(**config["head"])
    temperature = config["generative"]["squash_temperature"]
    local, synthetic = [], []
    with np.load(run_dir / "synthetic.npz", allow_pickle=False) as syn:
        for c in clients:
            own = syn["client"] == c.id
            x, y = unsquash(syn["embeddings"][own], temperature), syn["labels"][own]
            h_real = train_head(
                x=c.x_train,
                y=c.y_train,
                n_classes=n_classes,
                cfg=head_cfg,
                seed=derive_seed(seed, LOCAL_HEAD, c.id),
            )
            h_syn = train_head(
                x=x,
                y=y,
                n_classes=n_classes,
                cfg=head_cfg,
                seed=derive_seed(seed, SYNTHETIC_HEAD, c.id),
            )
            local.append(head_probs(h_real, c, prior=label_prior(c.y_train, n_classes)))
            synthetic.append(head_probs(h_syn, c, prior=label_prior(y, n_classes)))
    resolution = config["weights_grid_resolution"]
    ev = evaluate_clients(
        clients=clients, local=local, global_=synthetic, grid_resolution=resolution
    )
    for metric in LAMBDA_METRICS:
        ours, theirs = ev.protocol[metric], metrics["lambda_protocol"][metric]
        same = ours["lambda"] == theirs["lambda"] and all(
            abs(ours["summary"][k] - theirs["summary"][k]) < 1e-9 for k in ours["summary"]
        )
        if not same:
            raise SystemExit(f"error: the probe does not reproduce {run_dir}'s lambda protocol")
    n = len(clients)
    out = {"run": str(run_dir), "local": summarize(clients, local, synthetic, [1.0] * n)}
    for metric in LAMBDA_METRICS:
        lam = ev.protocol[metric]["lambda"]
        out[f"mix, lambda by {metric}"] = summarize(clients, local, synthetic, [lam] * n)
    grid = lambda_grid(resolution)
    for metric in LAMBDA_METRICS:
        lams = []
        for c, lo, gl in zip(clients, local, synthetic):
            scores = np.asarray(client_val_scores(lo, gl, c.y_val, grid)[metric])
            lams.append(float(grid[int(np.argmax(scores))]))
        out[f"mix, lambda per client by {metric}"] = summarize(clients, local, synthetic, lams)
    reweighted = [with_prior(s, lo.prior) for s, lo in zip(synthetic, local)]
    ev = evaluate_clients(
        clients=clients, local=local, global_=reweighted, grid_resolution=resolution
    )
    for metric in LAMBDA_METRICS:
        lam = ev.protocol[metric]["lambda"]
        out[f"mix with the client's prior, lambda by {metric}"] = summarize(
            clients, local, reweighted, [lam] * n
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory holding synthetic.npz")
    parser.add_argument("--database_root", help="the database, if it moved since the run")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = probe(args.run_dir, args.database_root)
    print(f"{'':56s} {'lam':>5s} {'acc':>6s} {'bal':>6s} {'F1':>6s} {'F1 own':>6s} {'absent':>6s}")
    for name, r in out.items():
        if name != "run":
            print(
                f"{name:56s} {r['lambda']:5.2f} {r['acc']:6.2f} {r['balanced_acc']:6.2f} "
                f"{r['f1_macro']:6.2f} {r['f1_macro_test_classes']:6.2f} "
                f"{r['predictions_of_absent_classes']:6d}"
            )
    if args.out:
        write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
