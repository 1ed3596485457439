"""The process runtime: the run directory, supervisord, the control channel, and the
service as an operator runs it (`up`, `down`, `status`, `reload`).

Kept free of imports so `sentiguard.runtime.net` and `.paths` load without the rest.
"""
