"""Where the time of a Flower deployment round goes: one ClientApp message, stage by stage.

Flower 1.42 starts a new `flwr-clientapp` process for every message, so each round a site pays,
besides its training: the process start, Flower's runtime imports, the app's imports (torch,
Opacus, ...), the app bundle (FAB) install, reading its data, rebuilding its client (the noise
calibration included) and restoring and saving its state in Context.state. This script measures:

1. process start and imports, each in fresh processes (median of --repeats): `python -c pass`,
   then Flower's ClientApp runtime module, then that plus the app (`fl.client_app`), then
   Opacus if the app did not import it;
2. the FAB install (`install_from_fab` of the app `flwr run` would ship), into a new and into
   an existing Flower home (a SuperNode's case after the first message);
3. the train messages of one site (--site) for --rounds rounds, each in a fresh process of this
   script, with the site's Context.state kept between them as a SuperNode keeps it. Stages:
   imports, settings and data, client rebuild (noise calibration and state restore apart),
   local training (the per-round PRV epsilon apart), state save;
4. with --deployment, the same flags as a whole run of `python -m fl.run_local --engine
   deployment` (every site at once on this machine), and the coordinator's time per round.

    python experiments/benchmarks/bench_flower.py --site 0 --rounds 3 -- \\
        --database_root $PWD/data/digits/database/tf_efficientnet_lite0 --method dpcvae \\
        --n_clients 10 --n_fedavg_rounds 3 --epsilon 1 --delta 1e-4 --accountant prv
    python experiments/benchmarks/bench_flower.py --deployment ... (adds the whole run)

An older commit's app is measured from its own tree (`git archive COMMIT | tar -x -C DIR`):
`cd DIR && PYTHONPATH=$PWD python /path/to/bench_flower.py ...`. Timings depend on the
machine's load: note `uptime` beside them, and compare figures taken
under the same conditions.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

RUNTIME = "flwr.supernode.runtime.run_clientapp"  # what flwr-clientapp imports first
APP = "fl.client_app"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (as `uptime` prints them)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def process_seconds(code: str, repeats: int) -> float:
    """Median wall time of `python -c code` in a fresh process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup(repeats: int) -> dict[str, float]:
    """Process start, Flower's runtime imports, the app's imports, then Opacus if the app did not
    import it (seconds, fresh processes)."""
    bare = process_seconds("pass", repeats)
    runtime = process_seconds(f"import {RUNTIME}", repeats)
    app = process_seconds(f"import {RUNTIME}, {APP}", repeats)
    dp = process_seconds(f"import {RUNTIME}, {APP}, opacus", repeats)
    return {
        "process start": bare,
        "flower imports": runtime - bare,
        "app imports": app - runtime,
        "opacus import": dp - app,
    }


def fab_install() -> dict[str, float]:
    """Seconds to install the app bundle into a new, then an existing, Flower home."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.install import install_from_fab

    from fl.run_local import stage_app

    with tempfile.TemporaryDirectory() as tmp:
        fab = build_fab_from_disk(stage_app(Path(tmp) / "app"))
        out = {}
        for name in ("fab install (first)", "fab install (again)"):
            start = time.perf_counter()
            install_from_fab(fab, install_dir=Path(tmp) / "home", skip_prompt=True)
            out[name] = time.perf_counter() - start
    return out


class Stages:
    """Seconds per named stage, summed over the calls made inside one message."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, attr: str, stage: str) -> None:
        """Time every call of `owner.attr` (a function or method) under `stage`."""
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, attr, timed)


def one_message(site: int, rnd: int, folder: Path) -> dict[str, float]:
    """One train message of one site, in this (fresh) process as flwr-clientapp runs it: the
    imports, then the stages; the site's Context.state and the global weights are read from and
    written back to `folder` (as the SuperNode keeps the state between messages)."""
    start = time.perf_counter()
    import flwr.supernode.runtime.run_clientapp  # noqa: F401

    flower = time.perf_counter()
    import fl.client_app  # noqa: F401  (the app's imports, timed)
    import fl.site as fl_site

    app = time.perf_counter()
    import opacus  # noqa: F401  (a DP site imports it on first use, if the app did not)

    dp = time.perf_counter()
    from flwr.app import Context, RecordDict
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    import algorithms.methods.dpcgan as dpcgan
    import algorithms.methods.dpcvae as dpcvae
    import algorithms.privacy.dp_client as dp_client
    import algorithms.privacy.dp_sgd as dp_sgd
    from algorithms.methods.generative import initial_global_weights
    from fl.records import record_weights, weights_record

    def read(name: str) -> RecordDict:
        path = folder / name
        if not path.exists():
            return RecordDict()
        return recorddict_from_proto(ProtoRecordDict.FromString(path.read_bytes()))

    def write(name: str, records: RecordDict) -> None:
        (folder / name).write_bytes(recorddict_to_proto(records).SerializeToString())

    argv = json.loads((folder / "argv.json").read_text())
    node_config = {"client-id": site, "split-file": argv["split"]}
    context = Context(1, 1000, node_config, read("state.pb"), {"main-args": argv["main-args"]})
    stages = Stages()
    stages.wrap(fl_site, "Site", "settings and data")
    stages.wrap(fl_site, "load_state", "state restore")
    stages.wrap(fl_site, "save_state", "state save")
    stages.wrap(dp_client, "calibrate_noise", "noise calibration")
    stages.wrap(dp_sgd.PrivateTraining, "epsilon", "epsilon (PRV)")
    for cls in (dpcvae.CVAEClient, dpcgan.CGANClient):
        stages.wrap(cls, "fit", "training")
        stages.wrap(cls, "load_state_dict", "state restore")
    begin = time.perf_counter()
    site_ = fl_site.Site(context)
    if (folder / "weights.pb").exists():
        weights = record_weights(read("weights.pb").array_records["weights"])
    else:
        s, dim = site_.settings, site_.data.x_train.shape[1]
        weights = initial_global_weights(
            s.method.name, dim, site_.n_classes, s.configs.generative, s.seed
        )
    build = time.perf_counter()
    client = site_.client()
    rebuild = time.perf_counter() - build
    update = fl_site.fit_round(client, weights, rnd, site_.settings.execution.device)
    fl_site.save_state(context.state, fl_site.STATE, client.state_dict())
    end = time.perf_counter()
    write("state.pb", context.state)
    write("weights.pb", RecordDict({"weights": weights_record(update.weights)}))
    out = {"flower imports": flower - start, "app imports": app - flower}
    out = {**out, "opacus import": dp - app, **stages.seconds}
    # the rebuild and the training without what is listed apart
    out["client rebuild"] = rebuild - out.get("noise calibration", 0.0)
    out["client rebuild"] -= out.get("state restore", 0.0)
    out["training"] -= out.get("epsilon (PRV)", 0.0)
    out["after imports"] = end - begin
    return out


def site_messages(main_args: list[str], site: int, rounds: int) -> list[dict[str, float]]:
    """The stages of `rounds` train messages of one site, each in a fresh process."""
    from fl.run_local import prepare

    argv, split, _, _ = prepare(main_args)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = {"main-args": shlex.join(argv), "split": str(split)}
        (folder / "argv.json").write_text(json.dumps(run))
        for rnd in range(rounds):
            child = [sys.executable, __file__, "--message", str(rnd), "--site", str(site)]
            child += ["--folder", tmp]
            start = time.perf_counter()
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            wall = time.perf_counter() - start
            figures.append({**json.loads(out.splitlines()[-1]), "process wall": wall})
    return figures


def deployment(main_args: list[str]) -> tuple[float, list[float]]:
    """A whole `fl.run_local` deployment run: its wall time and each train round's seconds."""
    from fl.run_local import run_local

    with tempfile.TemporaryDirectory() as tmp:
        argv = [*main_args, "--results_dir", str(Path(tmp) / "run"), "--quiet"]
        run = run_local(main_argv=argv, engine="deployment", work_dir=Path(tmp) / "work")
        log = (run.work_dir / "logs" / "run.log").read_text()
    rounds = [float(s) for s in re.findall(r"(?:secure )?train, \d+ replies in ([\d.]+) s", log)]
    return run.seconds, rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--site", type=int, default=0, help="client id of the measured site")
    parser.add_argument("--rounds", type=int, default=2, help="train messages of that site")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per figure")
    parser.add_argument("--deployment", action="store_true", help="also a whole deployment run")
    parser.add_argument("--message", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then main.py's flags")
    args = parser.parse_args(argv)
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    if args.message is not None:  # a child process: one message, its figures as JSON
        print(json.dumps(one_message(args.site, args.message, Path(args.folder))))
        return 0

    print(f"load average at start: {load_average()}")
    for name, seconds in {**startup(args.repeats), **fab_install()}.items():
        print(f"{name:>22}: {seconds:6.2f} s")
    for rnd, figures in enumerate(site_messages(main_args, args.site, args.rounds)):
        print(f"site {args.site}, train message of round {rnd + 1}:")
        for name, seconds in figures.items():
            print(f"{name:>22}: {seconds:6.2f} s")
    if args.deployment:
        wall, rounds = deployment(main_args)
        each = ", ".join(f"{r:.1f}" for r in rounds)
        print(f"deployment run: {wall:.1f} s; train rounds: {each} s")
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
