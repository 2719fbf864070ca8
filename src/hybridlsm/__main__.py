"""``python -m hybridlsm`` = the ``hybridlsm`` command."""

from hybridlsm.cli import app

app(prog_name="hybridlsm")
