"""`python -m kernex_agent` is `kernex-agent`."""

import sys

from kernex_agent.cli import main

sys.exit(main())
