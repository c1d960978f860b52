"""`python -m algorithms.audit`: the audit's command line (algorithms/audit/cli.py)."""

import sys

from algorithms.audit import cli

sys.exit(cli.main())
