"""The watchdog: finds workers that leak, hang, crash or cannot start, and restarts them.

`python -m sentiguard.watchdog` runs `process.Watchdog` under supervisord. The pieces:
`process` (signals, the loop, exit), `watch` (one round of checks over every worker),
`policy` (what to decide, no I/O), `actions` (carrying a decision out: drain, stop or
kill, start, park), `decisions` (the JSON decision log), `reports` (what the gateway is
told), `probe` (/health and /ready, and the probes in flight), `recycle` (the steps down
and up, shared with `sentiguard reload`), `drain` (the gateway's control socket),
`supervisor_client` (supervisord XML-RPC) and `counters` (restart counts across our own
restarts). Process-tree memory is `sentiguard.runtime.memory`; `sentiguard reload` is
`sentiguard.runtime.reload`.
"""
