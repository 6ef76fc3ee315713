"""Parallel decoding: the same HU as one process, in slice order, with the damaged file named."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctriage.io import CorruptFileError, load_volume
from ctriage.io.decode import CHUNK_SLICES, decode_series, to_hu
from ctriage.io.dicom import read_header, slice_source
from tests.io.dicom_factory import write_series

Z_40 = [float(z) for z in np.arange(40) * 2.5]  # five chunks


def test_worker_processes_give_the_same_volume(tmp_path):
    write_series(tmp_path / "s", Z_40)
    one = load_volume(tmp_path / "s", workers=1)
    three = load_volume(tmp_path / "s", workers=3)
    assert len(Z_40) > 2 * CHUNK_SLICES
    assert np.array_equal(one.hu, three.hu)


def test_decode_series_keeps_file_order(tmp_path):
    paths = write_series(tmp_path / "s", Z_40)
    slices = list(decode_series([slice_source(read_header(p)) for p in paths], "", workers=2))
    expected = [int(pydicom.dcmread(p).pixel_array[0, 0]) - 1024 for p in paths]  # factory: intercept -1024
    assert [int(s[0, 0]) for s in slices] == expected


def test_damaged_slice_in_a_worker_is_named(tmp_path):
    paths = write_series(tmp_path / "s", Z_40)
    ds = pydicom.dcmread(paths[1])  # the first chunk, which the worker usually takes
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(paths[1])
    sources = [slice_source(read_header(p)) for p in paths]
    with pytest.raises(CorruptFileError, match=paths[1].name):
        list(decode_series(sources, "", workers=2))
    # whoever decoded it there, the error must also cross the process boundary intact, naming the file
    from ctriage.io.decode import _decode_chunk, _worker_pool

    future = _worker_pool(1).submit(_decode_chunk, sources[:CHUNK_SLICES], "")
    with pytest.raises(CorruptFileError, match=paths[1].name) as raised:
        future.result()
    assert type(raised.value.__cause__).__name__ == "_RemoteTraceback"  # it came from the worker process


def test_to_hu_integer_and_float_rescale():
    stored = np.array([[0, 1024, 5000]], np.uint16)
    assert to_hu(stored, 1.0, -1024.0).tolist() == [[-1024, 0, 3071]]
    assert to_hu(stored, 0.5, -10.0).tolist() == [[-10, 502, 2490]]


def test_compressed_slice_decoded_from_its_pixel_data_offset(tmp_path):
    """A compressed slice is decoded straight from its Pixel Data element (the header is not parsed twice) and
    matches pydicom's own decoding; a native slice falls back to reading the whole file."""
    from pydicom.uid import JPEGLSLossless, RLELossless

    from ctriage.io.decode import _encapsulated_pixels, decode_hu

    paths = write_series(tmp_path / "s", Z_40[:12])
    native = slice_source(read_header(paths[0]))
    assert native.pixel_offset is None
    assert np.array_equal(decode_hu(native, ""), pydicom.dcmread(paths[0]).pixel_array.astype(np.int16) - 1024)
    for syntax, path in zip((JPEGLSLossless, RLELossless), paths[1:3], strict=True):
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
        source = slice_source(read_header(path))
        assert source.pixel_offset is not None
        assert np.array_equal(_encapsulated_pixels(source, ""), pydicom.dcmread(path).pixel_array)


def _ended(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status  # a zombie has ended; only its exit status waits to be collected


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to list child processes")
def test_workers_end_when_their_parent_is_killed():
    """No orphans: a decoding worker of a process that is killed (no clean-up runs) ends by itself."""
    script = (
        "import os, time\n"
        "from ctriage.io.decode import start_workers\n"
        "start_workers(2)\n"
        "pid = os.getpid()\n"
        "print(open(f'/proc/{pid}/task/{pid}/children').read(), flush=True)\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in process.stdout.readline().split()]
    assert workers, "no decoding worker was started"
    process.kill()
    process.wait(10)
    deadline = time.monotonic() + 15
    while not all(_ended(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_ended(pid) for pid in workers)


def test_slices_decoded_when_first_read(tmp_path):
    """With ``first``, only those slices are decoded at load and the others when read: the same HU as a full
    load. A damaged file among the slices not decoded yet still fails the load, naming the file: every slice's
    header and pixel data framing are checked before decoding."""
    from ctriage.io import find_studies, load_study

    write_series(tmp_path / "s", Z_40)
    whole = load_volume(tmp_path / "s")
    asked = []

    def every_fourth(spacing_mm):
        asked.append(spacing_mm)
        return slice(1, None, 4)

    volume = load_study(find_studies(tmp_path / "s")[0], first=every_fourth)
    assert asked == [whole.spacing_mm]
    assert np.array_equal(volume.hu_at(slice(1, None, 4)), whole.hu[1::4])
    assert np.array_equal(volume.hu_at(6), whole.hu[6])
    assert np.array_equal(volume.hu, whole.hu)

    damaged = whole.slice_files[2]
    ds = pydicom.dcmread(damaged)
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(damaged)
    with pytest.raises(CorruptFileError, match=f"{damaged.name}: pixel data cut short"):
        load_study(find_studies(tmp_path / "s")[0], first=every_fourth)
