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
from utils.cli import Parser
from utils.progress import set_quiet
from utils.results import write_metrics


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m algorithms.privacy.audit",
        description=algorithms.privacy.audit.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = AuditConfig()
    parser.add_argument("run_dir", help="a finished dpcvae / dpcgan run directory (main.py)")
    parser.add_argument(
        "--target_client",
        type=int,
        default=None,
        help="id of the client whose training gets the canaries. Default: the smallest client",
    )
    parser.add_argument(
        "--n_canaries",
        type=int,
        default=d.n_canaries,
        help=f"canaries inserted (members); as many are held out. Default: {d.n_canaries}",
    )
    parser.add_argument(
        "--canary_label",
        type=int,
        default=None,
        help="class index of the canaries. Default: the target client's rarest class (ties: "
        "the federation's rarest)",
    )
    parser.add_argument(
        "--n_latent",
        type=int,
        default=d.n_latent,
        help=f"latent draws of the reconstruction attack. Default: {d.n_latent}",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=d.confidence,
        help=f"confidence of the epsilon lower bounds. Default: {d.confidence}",
    )
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
            cfg = AuditConfig(
                target_client=args.target_client,
                n_canaries=args.n_canaries,
                canary_label=args.canary_label,
                n_latent=args.n_latent,
                confidence=args.confidence,
            )
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
