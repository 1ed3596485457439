"""The watchdog: finds workers that leak, hang, crash or cannot start, and restarts them.

`python -m sentiguard.watchdog` runs `main.Watchdog` under supervisord. The pieces:
`policy` (what to decide, no I/O), `memory` (process-tree USS/RSS, CPU, kill),
`probe` (/health and /ready), `supervisor_client` (supervisord XML-RPC),
`drain` (the gateway's control socket), `recycle` (the steps down and up),
`actions` (those steps in threads), `counters` (restart counts across our own restarts),
and `reload` (`sentiguard reload`: one worker at a time to a new model).
"""
