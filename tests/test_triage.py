"""Worklist ranking rules on hand-made studies."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctriage.cli import app
from ctriage.triage import TriageItem, load_item, rank

NOW = datetime(2020, 3, 1, tzinfo=UTC)


def report(probability: float | None, positive: bool, max_ratio: float | None, arrival: str | None) -> dict:
    """A report.json-shaped dict with only the fields triage reads."""
    out: dict = {"study": {"patient_id": "P", "study_date": "20200301"}, "severity": {}, "identification": {}}
    if probability is not None:
        out["identification"] = {"probability": probability, "threshold": 0.5, "positive": positive,
                                 "model_version": "test"}
    if max_ratio is not None:
        out["severity"] = {"max_ratio": max_ratio, "ct_category": 2}
    if arrival is not None:
        out["arrival_time"] = arrival
    return out


def items() -> list[TriageItem]:
    rows = {
        "a": report(0.90, True, 0.10, "2020-03-01T08:00:00"),
        "b": report(0.60, True, 0.40, "2020-03-01T09:00:00"),
        "c": report(0.30, False, 0.70, "2020-03-01T07:00:00"),
        "d": report(0.30, False, 0.05, "2020-03-01T06:00:00"),  # ties c on probability, arrived earlier
        "e": report(None, False, None, "2020-03-01T05:00:00"),  # not analysed: last under every policy
    }
    return [TriageItem.from_report(r, name, NOW) for name, r in rows.items()]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("identification", ["a", "b", "d", "c", "e"]),
        ("severity", ["c", "b", "a", "d", "e"]),
        ("combined", ["b", "a", "c", "d", "e"]),
    ],
)
def test_rank_policies(policy: str, expected: list[str]) -> None:
    assert [i.name for i in rank(items(), policy)] == expected


def test_ties_broken_by_arrival_and_timezones_compared_in_utc() -> None:
    early = TriageItem.from_report(report(0.5, True, 0.2, "2020-03-01T10:00:00+02:00"), "early", NOW)  # 08:00Z
    late = TriageItem.from_report(report(0.5, True, 0.2, "2020-03-01T09:00:00"), "late", NOW)  # 09:00Z
    assert [i.name for i in rank([late, early], "severity")] == ["early", "late"]


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown triage policy"):
        rank(items(), "alphabetical")


def test_missing_arrival_uses_file_mtime(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    path = tmp_path / "s" / "report.json"
    path.write_text(json.dumps(report(0.5, True, 0.2, None)))
    os.utime(path, (1_583_020_800, 1_583_020_800))  # 2020-03-01T00:00:00Z
    assert load_item(tmp_path / "s").arrival_time == datetime(2020, 3, 1, tzinfo=UTC)


def test_triage_command_prints_ranked_table(tmp_path: Path) -> None:
    for name, r in {"low": report(0.1, False, 0.0, "2020-03-01T08:00:00"),
                    "high": report(0.9, True, 0.5, "2020-03-01T09:00:00")}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(r))
    arguments = ["triage", str(tmp_path / "low"), str(tmp_path / "high"), "--policy", "identification"]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.index("high") < result.output.index("low")
    missing = CliRunner().invoke(app, ["triage", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
