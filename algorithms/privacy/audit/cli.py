"""The audit's command line (`python -m algorithms.privacy.audit RUN_DIR`): parse, audit, check the
bounds, write the "audit" block into metrics.json (see the package docstring)."""

from __future__ import annotations

import argparse
import sys

import torch

import algorithms.privacy.audit
from algorithms.privacy.audit.run import (
    AuditConfig,
    AuditError,
    PrivacyViolation,
    check_bounds,
    format_report,
    load_run,
    run_audit,
)
from utils.cli import Parser, add_flags, config_from_args
from utils.progress import set_quiet
from utils.results import write_metrics


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m algorithms.privacy.audit",
        description=algorithms.privacy.audit.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="a finished dpcvae / dpcgan run directory (main.py)")
    add_flags(AuditConfig, lambda section: parser)
    parser.add_argument("--database_root", default=None, help="Default: the run's config.json")
    parser.add_argument("--split_file", default=None, help="Default: the run's config.json")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an audit already in metrics.json"
    )
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch threads, as main.py's: that many clients train at once; 0 keeps torch's "
        "default. Default: 1",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    try:
        if args.num_threads < 0:
            raise AuditError(f"--num_threads must be >= 0, got {args.num_threads}")
        try:
            cfg = config_from_args(AuditConfig, args, sections=[None])
        except ValueError as err:
            raise AuditError(str(err)) from None
        setup = load_run(args.run_dir, args.database_root, args.split_file)
        if "audit" in setup.metrics and not args.overwrite:
            raise AuditError(
                f"{setup.run_dir}: metrics.json already holds an audit; pass --overwrite"
            )
        if args.num_threads > 0:
            torch.set_num_threads(args.num_threads)
        audit = run_audit(setup, cfg)
    except AuditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        check_bounds(audit)
    except PrivacyViolation as err:
        print(format_report(audit, checked=False), file=sys.stderr)
        print(f"BUG: {err}", file=sys.stderr)
        return 1
    write_metrics(setup.run_dir, {**setup.metrics, "audit": audit})
    print(format_report(audit))
    return 0
