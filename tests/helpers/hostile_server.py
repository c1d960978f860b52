"""A hostile ServerApp (tests/fl/test_adversarial_ledger.py, shipped by fl/run_local.py's
`server_app`): it sends every site two train messages for round 1 at once, as overlapping
tasks, and writes what came back to `<results_dir>/hostile.json`."""

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from algorithms.methods.generative import initial_global_weights
from fl.records import weights_record
from fl.settings import run_settings
from fl.sites import connect
from utils.io import write_json

app = ServerApp()


@app.main()
def replay(grid: Grid, context: Context) -> None:
    """Round 1, twice at once for each site; the replies (answer or refusal) to a file."""
    settings = run_settings(context.run_config)
    _, hello = connect(grid, settings.args.n_clients, 60.0, 120.0)
    first = hello[min(hello)]
    dim, n_classes = int(first["dim"]), int(first["n_classes"])
    cfg = settings.configs.generative
    weights = initial_global_weights(settings.method.name, dim, n_classes, cfg, settings.seed)
    record = weights_record(weights)
    messages = [
        Message(
            RecordDict({"weights": record, "config": ConfigRecord({"round": 0})}),
            info["node"],
            "train",
            group_id="round 1",
        )
        for info in hello.values()
        for _ in range(2)
    ]
    replies = grid.send_and_receive(messages, timeout=120)
    outcome = [
        {
            "node": r.metadata.src_node_id,
            "refusal": r.error.reason if r.has_error() else None,
        }
        for r in replies
    ]
    results = Path(settings.args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "hostile.json", outcome)
