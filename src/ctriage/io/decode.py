"""Decoding the pixel data of single-frame DICOM slices to HU, in parallel across processes.

The decoders (CharLS, OpenJPEG, libjpeg) hold Python's GIL, so threads do not run them in parallel: slices are
decoded in chunks by worker processes while the calling process decodes chunks itself, taking them from the end
of the series. The worker pool starts on first use (forked from a single-threaded process such as the CLI,
spawned in the multi-threaded service) and is kept for later series.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID

from ctriage.io.errors import CorruptFileError
from ctriage.system import available_cores

ENCAPSULATED_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"  # (7FE0,0010) OB, undefined length
CHUNK_SLICES = 8  # slices per task: large enough that task overhead is small, small enough to balance
HU_RANGE = (-1024, 3071)  # the 12-bit CT range; values outside are padding or metal streaks

_pool: ProcessPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()  # the service analyses studies on several threads


def to_hu(pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored pixel values -> int16 HU (``pixels`` x ``slope`` + ``intercept``, rounded, clipped to ``HU_RANGE``)."""
    if slope == 1 and float(intercept).is_integer() and pixels.dtype.kind in "iu" and pixels.itemsize <= 2:
        hu = pixels.astype(np.int32)  # integer fast path: the usual CT rescale (slope 1, intercept -1024)
        hu += int(intercept)
    else:
        hu = np.rint(pixels.astype(np.float32) * slope + intercept)
    return np.clip(hu, *HU_RANGE).astype(np.int16)


@dataclass(frozen=True)
class SliceSource:
    """One single-frame slice to decode: its file, the file offset of its Pixel Data element when that holds
    encapsulated (compressed) data (None: pydicom reads the whole file), its transfer syntax UID, its pixel
    description (pydicom decoder options: rows, columns, bits_stored, ...) and its rescale to HU."""

    path: Path
    pixel_offset: int | None
    transfer_syntax: str
    description: dict[str, int | str]
    slope: float
    intercept: float


def _encapsulated_pixels(source: SliceSource, plugin: str) -> np.ndarray | None:
    """Decode the encapsulated Pixel Data value at ``source.pixel_offset`` with pydicom's decoder, so that the
    header is not parsed a second time; None when the element there is not encapsulated Pixel Data."""
    with open(source.path, "rb") as handle:
        handle.seek(source.pixel_offset)
        if handle.read(len(ENCAPSULATED_PIXEL_DATA)) != ENCAPSULATED_PIXEL_DATA:
            return None
        value = handle.read()
    decoder = get_decoder(UID(source.transfer_syntax))
    return decoder.as_array(value, decoding_plugin=plugin, **source.description)[0]


def decode_hu(source: SliceSource, plugin: str) -> np.ndarray:
    """The HU image (int16, rows x columns) of one single-frame DICOM slice, decoded with ``plugin`` ("" = any)."""
    try:
        pixels = _encapsulated_pixels(source, plugin) if source.pixel_offset is not None else None
        if pixels is None:
            ds = pydicom.dcmread(source.path)
            pixels = pixel_array(ds, decoding_plugin=plugin) if plugin else ds.pixel_array
    except Exception as exc:  # decoders raise many exception types on damaged pixel data
        raise CorruptFileError(f"{source.path}: pixel data cannot be decoded ({exc})") from exc
    return to_hu(pixels, source.slope, source.intercept)


def _decode_chunk(sources: list[SliceSource], plugin: str) -> list[np.ndarray]:
    return [decode_hu(source, plugin) for source in sources]


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when the process that started it is gone (killed, or stopped by a
    signal that skips its clean-up), instead of living on as an orphan."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="ctriage-parent-watch", daemon=True).start()


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """The shared pool of ``workers`` processes, (re)started when missing or of another size."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers != workers:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            # fork is instant but unsafe once other threads run (the service): spawn there, once per process
            single_threaded = threading.active_count() == 1
            method = "fork" if single_threaded and "fork" in multiprocessing.get_all_start_methods() else "spawn"
            _pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                        initializer=_exit_with_parent, initargs=(os.getpid(),))
            _pool_workers = workers
        return _pool


def start_workers(workers: int | None = None) -> None:
    """Start the decoding worker processes now, e.g. before a program starts threads, so that they can be
    forked instead of spawned. ``workers`` counts the calling process too (default: the available cores)."""
    workers = available_cores() if workers is None else max(1, workers)
    if workers > 1:
        _worker_pool(workers - 1).submit(int).result()  # the pool creates its processes at the first task


def _forget_pool() -> None:
    global _pool
    _pool = None


def decode_series(sources: list[SliceSource], plugin: str, workers: int | None = None) -> Iterator[np.ndarray]:
    """HU images of ``sources`` in order, decoded by this process and ``workers`` - 1 worker processes (default:
    one per available core). Raises :class:`CorruptFileError` naming the first undecodable file."""
    workers = available_cores() if workers is None else max(1, workers)
    chunks = [sources[i : i + CHUNK_SLICES] for i in range(0, len(sources), CHUNK_SLICES)]
    if workers == 1 or len(chunks) < 2:
        for chunk in chunks:
            yield from _decode_chunk(chunk, plugin)
        return
    try:
        futures: list[Future] = [_worker_pool(workers - 1).submit(_decode_chunk, c, plugin) for c in chunks]
    except (BrokenProcessPool, RuntimeError, OSError):
        _forget_pool()
        futures = []
    local: dict[int, list[np.ndarray]] = {}
    for index in range(len(chunks) - 1, -1, -1):  # take chunks from the end until the workers reach them
        if futures and not futures[index].cancel():
            break
        local[index] = _decode_chunk(chunks[index], plugin)
    for index, chunk in enumerate(chunks):
        if index in local:
            yield from local.pop(index)
            continue
        try:
            yield from futures[index].result()
        except BrokenProcessPool:  # a worker died (killed, out of memory): decode here instead
            _forget_pool()
            yield from _decode_chunk(chunk, plugin)
