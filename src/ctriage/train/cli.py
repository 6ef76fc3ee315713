"""`ctriage train ...` commands; torch and MONAI are imported inside the commands only."""

from __future__ import annotations

import typer

app = typer.Typer(help="Train models (needs the [train] extra: torch + MONAI).", no_args_is_help=True)
