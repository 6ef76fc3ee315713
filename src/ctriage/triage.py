"""Worklist order over analysed studies under a site policy.

Policies (``POLICIES``):

- ``identification``: highest COVID-19 probability first;
- ``severity``: highest max lung ratio (the more involved lung's lesion fraction) first;
- ``combined``: identified positives first, then by severity within each group.

Ties (and studies missing the field a policy uses, which go last) are broken by arrival time, earliest first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

POLICIES = ("identification", "severity", "combined")


@dataclass(frozen=True)
class TriageItem:
    """What ranking needs from one report.json: ids, arrival (aware UTC), probability, positive, max ratio."""

    name: str
    patient_id: str
    study_date: str
    arrival_time: datetime
    probability: float
    positive: bool
    max_ratio: float
    ct_category: int | None

    @classmethod
    def from_report(cls, report: dict, name: str, fallback_arrival: datetime) -> TriageItem:
        """Build from a report.json dict; missing numbers become NaN (ranked last); naive times are UTC."""
        study = report.get("study") or {}
        identification = report.get("identification") or {}
        severity = report.get("severity") or {}
        arrival = report.get("arrival_time")
        arrival_time = datetime.fromisoformat(arrival) if arrival else fallback_arrival
        if arrival_time.tzinfo is None:
            arrival_time = arrival_time.replace(tzinfo=UTC)
        category = severity.get("ct_category")
        return cls(
            name=name,
            patient_id=str(study.get("patient_id", "")),
            study_date=str(study.get("study_date", "")),
            arrival_time=arrival_time,
            probability=_number(identification.get("probability")),
            positive=bool(identification.get("positive", False)),
            max_ratio=_number(severity.get("max_ratio")),
            ct_category=None if category is None else int(category),
        )


def _number(value: object) -> float:
    """Float of ``value``; NaN for None."""
    return float("nan") if value is None else float(value)


def _descending(value: float) -> tuple[bool, float]:
    """Sort key part: finite values first, larger first; NaN last."""
    return (math.isnan(value), -value if not math.isnan(value) else 0.0)


def sort_key(item: TriageItem, policy: str) -> tuple:
    """Sort key of ``item`` under ``policy`` (ascending sort = worklist order)."""
    arrival = item.arrival_time.timestamp()
    if policy == "identification":
        return (*_descending(item.probability), arrival)
    if policy == "severity":
        return (*_descending(item.max_ratio), arrival)
    if policy == "combined":
        return (not item.positive, *_descending(item.max_ratio), arrival)
    raise ValueError(f"unknown triage policy {policy!r}; choose one of {', '.join(POLICIES)}")


def rank(items: list[TriageItem], policy: str = "combined") -> list[TriageItem]:
    """``items`` in worklist order under ``policy`` (one of ``POLICIES``)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown triage policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return sorted(items, key=lambda item: sort_key(item, policy))


def load_item(outdir: Path) -> TriageItem:
    """Read ``outdir``/report.json; without ``arrival_time`` the file's modification time (UTC) is used."""
    path = Path(outdir) / "report.json"
    report = json.loads(path.read_text())
    mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    return TriageItem.from_report(report, name=Path(outdir).name, fallback_arrival=mtime)
