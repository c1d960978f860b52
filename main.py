"""Run one experiment on an embedding database and write its results files.

    python main.py --database_root data/digits/database/tf_efficientnet_lite0 --method fedavg

Creates (or reuses) the client split, runs the method, and writes config.json, history.csv and
metrics.json into the run directory (default: derived from the configuration). While a method
with rounds runs, checkpoint/ there holds its state after the last finished round: `--resume`
continues an interrupted run to the same results; the checkpoint is removed when the run ends.
A flag of a section (group below) that the chosen method does not read is refused.
"""

from __future__ import annotations

import sys

import torch

from algorithms.experiment import RUN_ERRORS, run
from algorithms.options import load_settings
from algorithms.report import summary_line
from utils.progress import set_quiet


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        settings = load_settings(argv, description=__doc__)
        set_quiet(settings.args.quiet)
        if settings.args.num_threads > 0:
            torch.set_num_threads(settings.args.num_threads)
        run_dir = run(settings)
    except RUN_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_line(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
