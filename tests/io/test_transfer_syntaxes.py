"""Compressed transfer syntaxes decode through the installed plugins; an undecodable one gets a clear error."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from ctriage.io import UnsupportedTransferSyntaxError, load_volume
from tests.io.dicom_factory import write_series

Z_12 = [2.0 * k for k in range(12)]


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian])
def test_compressed_series_decodes_to_same_hu(tmp_path, syntax):
    paths = write_series(tmp_path / "raw", Z_12)
    reference = load_volume(tmp_path / "raw").hu
    for path in paths:
        ds = pydicom.dcmread(path)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
        ds.save_as(path)
    assert str(pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID) == syntax
    assert np.array_equal(load_volume(tmp_path / "raw").hu, reference)


def test_jpeg_lossless_decoder_installed():
    """JPEG Lossless SV1 (P001's original syntax): no encoder here to write a test file, but a decoder is present."""
    assert get_decoder(JPEGLosslessSV1).is_available


def test_unknown_syntax_is_a_clear_error(tmp_path):
    paths = write_series(tmp_path / "s", Z_12)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video: no decoder
        ds.save_as(path, enforce_file_format=False)
    with pytest.raises(UnsupportedTransferSyntaxError, match="1.2.840.10008.1.2.4.100"):
        load_volume(tmp_path / "s")
