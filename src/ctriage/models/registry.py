"""Model registry: ONNX weights + JSON model card, found by name, run with ONNX Runtime on the CPU.

Layout of a models folder (the package's ``ctriage/models`` or a site folder)::

    weights/<name>.onnx     (or <name>.onnx at the top)
    cards/<name>.json

A folder given by the caller (``ctriage.Analyzer(models=folder)``) is searched first, then the folder named by the
environment variable ``CTRIAGE_MODEL_DIR``, so a site can update a model without reinstalling the package.
Sessions are cached per ONNX file (path and modification time).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

MODEL_DIR_ENV = "CTRIAGE_MODEL_DIR"
PACKAGE_MODEL_DIR = Path(__file__).resolve().parent


class ModelNotFoundError(FileNotFoundError):
    """No ONNX file and model card of that name in the searched folders."""


@dataclass(frozen=True)
class ModelHandle:
    """An ONNX Runtime session with its model card; ``version`` comes from the card."""

    name: str
    session: ort.InferenceSession = field(repr=False)
    card: dict[str, Any] = field(repr=False)
    onnx_path: Path

    @property
    def version(self) -> str:
        """The card's ``version`` string ("unknown" when the card has none)."""
        return str(self.card.get("version", "unknown"))

    @property
    def input_size(self) -> int:
        """Square input size in pixels, from the card (``input.size_px``)."""
        return int(self.card["input"]["size_px"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 (N, C, H, W) batch (input "image", output "logits")."""
        return self.session.run(["logits"], {"image": np.ascontiguousarray(batch, np.float32)})[0]

    @classmethod
    def from_files(cls, onnx_path: Path, card: dict[str, Any]) -> ModelHandle:
        """A handle over an explicit ONNX file and card dict (training export, tests)."""
        return cls(str(card.get("name", onnx_path.stem)), cached_session(str(onnx_path), onnx_path.stat().st_mtime),
                   card, onnx_path)


@lru_cache(maxsize=8)
def cached_session(onnx_path: str, mtime: float) -> ort.InferenceSession:
    """One CPU session per (file, modification time), one thread per run: callers run batches on several
    threads at once (``run`` is thread-safe), one per available core (see :func:`ctriage.lesions.predict_labels`),
    which on 2 cores ran about 10 % faster than one run at a time on 2 intra-op threads and keeps the cores busy
    with the batches' pre- and post-processing too."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def search_dirs(first: Path | None = None) -> list[Path]:
    """Folders searched for models, in order: ``first`` (when given), ``$CTRIAGE_MODEL_DIR`` (when set), then the
    package folder."""
    site = os.environ.get(MODEL_DIR_ENV)
    return ([Path(first)] if first is not None else []) + ([Path(site)] if site else []) + [PACKAGE_MODEL_DIR]


def find_model_files(name: str, first: Path | None = None) -> tuple[Path, Path]:
    """(ONNX path, card path) of model ``name`` from the first folder of :func:`search_dirs` that holds both."""
    for folder in search_dirs(first):
        card = folder / "cards" / f"{name}.json"
        for onnx in (folder / "weights" / f"{name}.onnx", folder / f"{name}.onnx"):
            if onnx.is_file() and card.is_file():
                return onnx, card
    raise ModelNotFoundError(f"model {name!r} not found in {', '.join(map(str, search_dirs(first)))}")


def load_model(name: str, first: Path | None = None) -> ModelHandle:
    """The model called ``name`` (e.g. "lesions") with a cached ONNX Runtime CPU session, from the folder ``first``
    when it holds it, else from ``$CTRIAGE_MODEL_DIR`` or the package (see :func:`search_dirs`)."""
    onnx_path, card_path = find_model_files(name, first)
    return ModelHandle.from_files(onnx_path, json.loads(card_path.read_text()))
