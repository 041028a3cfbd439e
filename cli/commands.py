"""Imports every command module so each registers its commands on the shared app, in the pipeline's order (the order
`hmt --help` lists them in; import sorting is off here for that reason)."""
# isort: off
from hmt_cli import check  # noqa: F401
from hmt_cli import synth  # noqa: F401
from hmt_cli import inspect  # noqa: F401
from hmt_cli import train  # noqa: F401
from hmt_cli import heatmaps  # noqa: F401
from hmt_cli import build  # noqa: F401
from hmt_cli import strategies  # noqa: F401
from hmt_cli import sanity  # noqa: F401
from hmt_cli import contrast  # noqa: F401
from hmt_cli import zones  # noqa: F401
from hmt_cli import compare  # noqa: F401
from hmt_cli import figures  # noqa: F401
from hmt_cli import report  # noqa: F401
from hmt_cli import demo  # noqa: F401
# isort: on
