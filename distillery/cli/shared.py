"""What every command shares: the store of the running command, --name and --resume."""
from __future__ import annotations

import click

from pipelines.store import Store

name_option = click.option("--name", help="Name for the version (moves NAME@latest to it).  [default: none]")
resume_option = click.option("--resume", is_flag=True, help="Continue an interrupted write or run.")


def current_store() -> Store:
    """The store of the running command (``--store``)."""
    return click.get_current_context().obj["store"]
