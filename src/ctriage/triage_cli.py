"""`ctriage triage OUTDIR...`: the ranked worklist of analysed studies as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ctriage.triage import POLICIES, TriageItem, load_item, rank

app = typer.Typer(help="Rank analysed studies (folders holding report.json) into a worklist.")


def _percent(value: float) -> str:
    """A [0, 1] value as a percentage string; '-' for NaN."""
    return "-" if value != value else f"{100.0 * value:.1f}"


def worklist_table(items: list[TriageItem], policy: str) -> Table:
    """Rich table of ``items`` in the given (already ranked) order."""
    table = Table(title=f"Worklist (policy: {policy})")
    columns = ("#", "study", "patient", "arrival (UTC)", "COVID-19 %", "identified", "max lung ratio %", "CT")
    for column in columns:
        table.add_column(column)
    for position, item in enumerate(items, start=1):
        table.add_row(
            str(position),
            item.name,
            item.patient_id,
            item.arrival_time.strftime("%Y-%m-%d %H:%M:%S"),
            _percent(item.probability),
            "yes" if item.positive else "no",
            _percent(item.max_ratio),
            "-" if item.ct_category is None else f"CT-{item.ct_category}",
        )
    return table


@app.command("triage")
def triage_command(
    outdirs: Annotated[list[Path], typer.Argument(help="Analysis output folders, each with a report.json.")],
    policy: Annotated[str, typer.Option(help=f"Site policy: {', '.join(POLICIES)}.")] = "combined",
) -> None:
    """Print the studies in worklist order under the site policy (ties: earliest arrival first)."""
    if policy not in POLICIES:
        raise typer.BadParameter(f"choose one of {', '.join(POLICIES)}", param_hint="--policy")
    missing = [str(d) for d in outdirs if not (d / "report.json").is_file()]
    if missing:
        typer.echo(f"no report.json in: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    Console().print(worklist_table(rank([load_item(d) for d in outdirs], policy), policy))
