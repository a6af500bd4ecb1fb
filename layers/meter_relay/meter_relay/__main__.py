"""`python -m meter_relay`: the same as the `meter-relay` command."""

import sys

from meter_relay.cli import main

sys.exit(main())
