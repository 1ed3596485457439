"""Drive the real service from outside, as a client and an operator would.

The one copy that tests/ and bench/ share: `ports` hands out loopback ports, `client`
speaks HTTP and waits for conditions, `service` starts and stops `sentiguard up` (or the
gateway alone), `load` is closed-loop client traffic, `timeline` records what /status said
and what a scenario measured, and `scenarios` injects the faults.
"""
