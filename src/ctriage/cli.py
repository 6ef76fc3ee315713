"""The `ctriage` command line: a thin shell over the pipeline, report, triage, evaluation and service (`analyze`
and `triage` here; `train`, `evaluate` and the service's commands in their packages' cli modules)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ctriage import __version__
from ctriage.evaluate.cli import app as evaluate_app
from ctriage.io import InputError, StudySource, find_studies
from ctriage.io.decode import start_workers
from ctriage.service.cli import app as service_app
from ctriage.train.cli import app as train_app
from ctriage.triage import POLICIES, TriageItem, load_item, rank

# `ctriage triage` is a one-command Typer added like the command groups: `ctriage --help` lists it among them
triage_app = typer.Typer(help="Rank analysed studies (folders holding report.json) into a worklist.")
app = typer.Typer(
    help="ctriage: chest CT triage for COVID-19 pneumonia.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(triage_app)
app.add_typer(service_app)

console = Console(stderr=True, soft_wrap=True)
EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 1
REPORT_STAGE = "report"  # shown after the pipeline's stages (``ctriage.pipeline.STAGES``)


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(EXIT_BAD_INPUT)


@app.command()
def version() -> None:
    """Print the software version."""
    typer.echo(__version__)


@app.command()
def analyze(
    path: Annotated[Path, typer.Argument(help="DICOM series folder, DICOM file, NIfTI file, or a folder of studies")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Where the outputs go (one subfolder per study)")],
    lesion_mask: Annotated[
        Path | None, typer.Option(help="NIfTI lesion mask (0 bg, 1 GGO, 2 consolidation) instead of the model")
    ] = None,
) -> None:
    """Analyse chest CT studies: lungs, lesions, COVID-19 probability, severity; write report.json and pictures."""
    from ctriage.pipeline import STAGES, analyze_study
    from ctriage.report import prepare_outdir, write_outputs

    stages = (*STAGES, REPORT_STAGE)

    try:
        studies = find_studies(path)
        prepare_outdir(outdir)  # before any analysis: writable, enough free space
    except InputError as exc:
        raise _fail(str(exc)) from None
    if lesion_mask is not None and len(studies) > 1:
        raise _fail("--lesion-mask applies to a single study, but the input holds several")
    if lesion_mask is not None and not lesion_mask.exists():
        raise _fail(f"{lesion_mask}: no such lesion mask file")
    targets = [outdir] if len(studies) == 1 else [outdir / name for name in output_names(studies)]
    failures, crashes = 0, 0
    start_workers()  # before the progress display starts its thread: the decoding workers can be forked
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        for study, target in zip(studies, targets, strict=True):
            task = progress.add_task(study.label, total=len(stages), stage="")

            def advance(stage: str, task=task) -> None:
                progress.update(task, stage=stage, completed=stages.index(stage))

            try:
                prepare_outdir(target)  # an earlier report there is removed before the analysis, not after
                result = analyze_study(study, lesion_mask=lesion_mask, progress=advance)
                advance(REPORT_STAGE)
                write_outputs(result, target)
            except InputError as exc:
                failures += 1
                progress.update(task, stage="[red]failed")
                console.print(f"[bold red]error:[/] {exc}")
                continue
            except Exception as exc:  # a bug: one line naming the study, not a traceback; the other studies go on
                crashes += 1
                progress.update(task, stage="[red]failed")
                console.print(f"[bold red]internal error:[/] {study.label}: {type(exc).__name__}: {exc}")
                continue
            progress.update(task, stage="done", completed=len(stages))
            severity = result.severity
            summary = f"CT-{severity.ct_category}  worse lung {100 * severity.max_ratio:.1f} %"
            if result.identification is not None:
                summary += f"  COVID-19 p={result.identification.probability:.2f}"
            console.print(f"{study.label}: {summary}  -> {target / 'report.json'}")
            for warning in result.warnings:
                console.print(f"[yellow]warning:[/] {study.label}: {warning}")
    if crashes:
        raise typer.Exit(EXIT_INTERNAL_ERROR)
    if failures:
        raise typer.Exit(EXIT_BAD_INPUT)


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


@triage_app.command("triage")
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
        raise typer.Exit(EXIT_BAD_INPUT)
    Console().print(worklist_table(rank([load_item(d) for d in outdirs], policy), policy))


def _safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_") or "study"


def _study_key(study: StudySource) -> list[str]:
    """Patient ID, study date and an 8-character hash of the StudyInstanceUID of a DICOM study (what tells apart
    studies found in one folder); empty for a NIfTI file."""
    header = next(iter(study.headers.values()), None)
    if header is None:
        return []
    uid = str(getattr(header.ds, "StudyInstanceUID", ""))
    return [_safe_name(str(getattr(header.ds, key, "") or "")) for key in ("PatientID", "StudyDate")] + [
        hashlib.sha1(uid.encode()).hexdigest()[:8]
    ]


def output_names(studies: list[StudySource]) -> list[str]:
    """One output folder name per study, never two alike: the study's label (its path under the input folder)
    made safe for file names; where labels are alike (several studies in one flat folder), patient ID, study
    date and a hash of the StudyInstanceUID are added, then a counter if names are still alike."""
    labels = [_safe_name(study.label) for study in studies]
    shared = Counter(labels)
    names = [
        "_".join(part for part in [label, *_study_key(study)] if part) if shared[label] > 1 else label
        for study, label in zip(studies, labels, strict=True)
    ]
    repeats = Counter(names)
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(f"{name}_{seen[name]}" if repeats[name] > 1 else name)
    return unique


def main() -> None:
    app()
