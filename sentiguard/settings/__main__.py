"""`python -m sentiguard.settings > conf/sentiguard.toml` regenerates the documented config."""

from sentiguard.settings import render_toml

print(render_toml(), end="")
