"""`python -m sentiguard.gateway`: run the gateway process (see `server.py`)."""

from sentiguard.gateway.server import main
from sentiguard.logs import exit_now

exit_now(main())
