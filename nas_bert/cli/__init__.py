"""The `nas-bert` command line: commands in `commands`, the tables they print in `tables`."""

from nas_bert.cli.commands import app

__all__ = ["app"]
