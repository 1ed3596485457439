"""`python -m sentiguard.gateway`: run the gateway process (see `server.py`)."""

import sys

from sentiguard.gateway.server import main

sys.exit(main())
