"""`python -m algorithms.privacy.audit`: the audit's command line (cli.py)."""

import sys

from algorithms.privacy.audit import cli

sys.exit(cli.main())
