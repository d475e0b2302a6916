"""The command line: `main` dispatches to one thin module per subcommand."""

from .main import entry_point, main

__all__ = ["entry_point", "main"]
