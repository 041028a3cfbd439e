"""Imports every command module so each registers its commands on the shared app."""
from hmt_cli import (
    build,  # noqa: F401
    check,  # noqa: F401
    compare,  # noqa: F401
    demo,  # noqa: F401
    figures,  # noqa: F401
    heatmaps,  # noqa: F401
    inspect,  # noqa: F401
    report,  # noqa: F401
    sanity,  # noqa: F401
    strategies,  # noqa: F401
    synth,  # noqa: F401
    train,  # noqa: F401
)
