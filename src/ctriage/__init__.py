"""ctriage: chest CT triage for COVID-19 pneumonia.

The Python API (see the README's "Python API")::

    import ctriage

    result = ctriage.analyze("study_folder")   # a StudyResult: lungs, lesions, identification, severity
    ctriage.write_outputs(result, "out")        # report.json, NIfTI masks, pictures

``ctriage.Analyzer`` loads the models once for many studies; bad input raises a ``ctriage.InputError``. The
analysis and report names are imported on first use (``import ctriage`` loads the CT readers only).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from ctriage.io import errors as _errors  # noqa: E402 (the package imports ctriage.__version__)

_HOMES = {  # public name -> module that defines it
    **dict.fromkeys(("Analyzer", "Models", "STAGES", "analyze"), "ctriage.pipeline"),
    **dict.fromkeys(("StudyResult", "Lesions", "Completeness"), "ctriage.result"),
    **dict.fromkeys(("CTVolume", "StudySource", "find_studies", "load_volume"), "ctriage.io"),
    **dict.fromkeys(("LesionLabel", "LungLabel"), "ctriage.labels"),
    "write_outputs": "ctriage.report",
    **dict.fromkeys(_errors.__all__, "ctriage.io.errors"),  # the input errors
}
__all__ = ["__version__", *_HOMES]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ctriage' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

