"""Run the router with `python -m meterway.router --config FILE`."""

import sys

from meterway.router.cli import main

sys.exit(main())
