"""`ctriage evaluate ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Evaluate models against reference labels (Dice, ROC AUC, Spearman ...).", no_args_is_help=True)
