"""DICOM series discovery, validation and decoding to HU."""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from ctriage.io.checks import check_hounsfield, slice_warnings
from ctriage.io.decode import SliceSource, decode_series, to_hu
from ctriage.io.errors import (
    CorruptFileError,
    EmptyInputError,
    HeaderError,
    IncompleteSeriesError,
    NotCTError,
    NotVolumeError,
    UnsupportedTransferSyntaxError,
)
from ctriage.io.orientation import is_canonical, to_canonical
from ctriage.io.volume import CTVolume, StudyMeta, affine_from_lps

MIN_SLICES = 10
GAP_TOLERANCE = 0.05  # relative deviation of a slice gap from the median gap that is still uniform
# Decoders in order of speed (measured on a JPEG-LS study: CharLS 1.1 s, libjpeg 4.4 s per 133 slices).
PREFERRED_PLUGINS = ("pyjpegls", "pylibjpeg", "gdcm", "pillow")
ORIENTATION_TOLERANCE = 1e-3  # direction cosines of the slices of one series agree within this
PIXEL_TAGS = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
              "PhotometricInterpretation")  # the pixel description every slice needs to be decoded
# JPEG, JPEG-LS and JPEG 2000 code streams end with the marker FF D9 (EOI / EOC): a cut stream does not
ENDS_WITH_EOI = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes + JPEG2000TransferSyntaxes)
FirstSlices = Callable[[tuple[float, float, float]], slice]  # voxel spacing (z, y, x) mm -> z slices to decode now


@dataclass
class DicomHeader:
    """A DICOM file's data set without its pixel data, and the file offset where parsing stopped: the start
    of the Pixel Data element (checked before use, see :func:`ctriage.io.decode.decode_hu`)."""

    path: Path
    ds: pydicom.Dataset
    pixel_offset: int | None = None

    @property
    def series_uid(self) -> str:
        return str(getattr(self.ds, "SeriesInstanceUID", ""))


def read_header(path: Path) -> DicomHeader:
    """The header of the DICOM file at ``path`` (pydicom errors propagate)."""
    with open(path, "rb") as handle:
        ds = pydicom.dcmread(handle, stop_before_pixels=True)
        return DicomHeader(path, ds, handle.tell())


def header_floats(ds: pydicom.Dataset, keyword: str, count: int, path: Path) -> tuple[float, ...] | None:
    """The ``count`` numbers of the header field ``keyword`` (None when absent or empty); raises
    :class:`HeaderError` naming the field when its value is not ``count`` finite numbers."""
    try:
        value = getattr(ds, keyword, None)
        if value is None or value == "":
            return None
        numbers = tuple(float(v) for v in (value if isinstance(value, MultiValue | list | tuple) else [value]))
    except Exception as exc:  # pydicom raises many types for damaged values
        raise HeaderError(f"{path}: unreadable {keyword} ({exc})") from exc
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise HeaderError(f"{path}: {keyword} should be {count} finite numbers, not {value!r}")
    return numbers


def transfer_syntax(header: DicomHeader) -> pydicom.uid.UID:
    """The transfer syntax of the file of ``header``; :class:`HeaderError` when its file meta lacks it."""
    syntax = getattr(header.ds.file_meta, "TransferSyntaxUID", None)
    if not syntax:
        raise HeaderError(f"{header.path}: the file meta information has no TransferSyntaxUID")
    return syntax


def _rescale(ds: pydicom.Dataset, path: Path) -> tuple[float, float]:
    """(slope, intercept) from stored value to HU: (1, 0) where the tags are absent (the HU check after loading
    refuses raw values); :class:`HeaderError` for a zero or unreadable slope."""
    slope = (header_floats(ds, "RescaleSlope", 1, path) or (1.0,))[0]
    intercept = (header_floats(ds, "RescaleIntercept", 1, path) or (0.0,))[0]
    if slope == 0:
        raise HeaderError(f"{path}: RescaleSlope is 0: stored values cannot be turned into HU")
    return slope, intercept


def slice_source(header: DicomHeader) -> SliceSource:
    """What a decoding worker needs to decode the single-frame slice of ``header`` without parsing it again
    (its pixel description is checked by :func:`check_slice_header`)."""
    ds, syntax = header.ds, transfer_syntax(header)
    description: dict[str, int | str] = {
        "rows": int(ds.Rows), "columns": int(ds.Columns), "samples_per_pixel": int(ds.SamplesPerPixel),
        "bits_allocated": int(ds.BitsAllocated), "bits_stored": int(ds.BitsStored),
        "pixel_representation": int(ds.PixelRepresentation),
        "photometric_interpretation": str(ds.PhotometricInterpretation), "number_of_frames": 1,
    }
    slope, intercept = _rescale(ds, header.path)
    return SliceSource(
        path=header.path,
        pixel_offset=header.pixel_offset if syntax.is_encapsulated and not syntax.is_deflated else None,
        transfer_syntax=str(syntax),
        description=description,
        slope=slope,
        intercept=intercept,
    )


def _pixel_description(ds: pydicom.Dataset) -> tuple[object, ...]:
    """What must be alike in every slice of a series: ``PIXEL_TAGS`` and which rescale tags are present."""
    return (*(getattr(ds, tag, None) for tag in PIXEL_TAGS), "RescaleSlope" in ds, "RescaleIntercept" in ds)


def check_slice_header(header: DicomHeader, series_first: DicomHeader | None = None) -> None:
    """Refuse a slice whose pixel description (``PIXEL_TAGS``) is missing or invalid, or differs from that of
    ``series_first`` (the series' first slice), or which lacks rescale tags that slice has (its values would be
    read raw); then check its pixel data's framing (:func:`check_pixel_data`)."""
    ds, path = header.ds, header.path
    try:
        values = {tag: getattr(ds, tag) for tag in PIXEL_TAGS}
        numbers = {tag: int(values[tag]) for tag in PIXEL_TAGS[:-1]}
    except AttributeError as exc:
        raise CorruptFileError(f"{path}: the slice lacks its pixel description ({exc})") from exc
    except (TypeError, ValueError) as exc:
        raise HeaderError(f"{path}: invalid pixel description ({exc})") from exc
    if min(numbers["Rows"], numbers["Columns"], numbers["SamplesPerPixel"], numbers["BitsStored"]) < 1 or (
        numbers["BitsAllocated"] not in (8, 16, 32) or numbers["BitsStored"] > numbers["BitsAllocated"]
    ):
        raise HeaderError(f"{path}: invalid pixel description {numbers}")
    if numbers["SamplesPerPixel"] != 1 or not str(values["PhotometricInterpretation"]).startswith("MONOCHROME"):
        raise NotCTError(
            f"{path}: a colour image ({values['PhotometricInterpretation']}, {numbers['SamplesPerPixel']} samples "
            "per pixel), not CT attenuation values"
        )
    if series_first is not None and _pixel_description(ds) != _pixel_description(series_first.ds):
        first = series_first.ds
        if (numbers["Rows"], numbers["Columns"]) != (int(first.Rows), int(first.Columns)):
            raise NotVolumeError(
                f"{path}: slice of {numbers['Rows']} x {numbers['Columns']} pixels in a series of "
                f"{first.Rows} x {first.Columns} pixel slices"
            )
        raise HeaderError(
            f"{path}: pixel description or rescale tags {_pixel_description(ds)} differ from the series' first "
            f"slice {series_first.path.name} {_pixel_description(first)}"
        )
    _rescale(ds, path)
    check_pixel_data(header)


def _element_at(handle, offset: int, little: bool, implicit: bool) -> tuple[int, int, int] | None:
    """(tag, value length, value offset) of the data element at ``offset`` of an open DICOM file; None at its end."""
    handle.seek(offset)
    head = handle.read(12)
    if len(head) < 8:
        return None
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    if implicit or group == 0xFFFE:  # items and delimiters have no VR
        return (group << 16) | element, struct.unpack(endian + "I", head[4:8])[0], offset + 8
    if len(head) < 12:
        return None
    return (group << 16) | element, struct.unpack(endian + "I", head[8:12])[0], offset + 12


def check_pixel_data(header: DicomHeader) -> None:
    """Refuse a file whose Pixel Data is absent, shorter than its pixel description needs, or whose encapsulated
    fragments are cut (no sequence delimiter, or a JPEG / JPEG-LS / JPEG 2000 code stream without its end
    marker). Reads a few bytes per file, no decoding: damage inside a compressed code stream shows only when that
    slice is decoded (:class:`CorruptFileError` naming the file, whenever that happens)."""
    ds, path = header.ds, header.path
    syntax = transfer_syntax(header)
    if syntax.is_deflated or header.pixel_offset is None:  # the whole data set is compressed: checked on decoding
        return
    size = path.stat().st_size
    with open(path, "rb") as handle:
        element = _element_at(handle, header.pixel_offset, syntax.is_little_endian, syntax.is_implicit_VR)
        if element is None or element[0] != 0x7FE00010:
            raise CorruptFileError(f"{path}: no pixel data (the file is cut short or damaged)")
        _, length, start = element
        if length != 0xFFFFFFFF:  # native pixel data
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            needed = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8 * frames
            if syntax.is_encapsulated or min(length, size - start) < needed:
                raise CorruptFileError(
                    f"{path}: pixel data cut short: {min(length, size - start)} of {needed} bytes"
                )
            if length > needed + 1:  # one byte of padding to an even length
                raise HeaderError(
                    f"{path}: {length} bytes of pixel data where rows x columns x bits allocated give {needed}"
                )
            return
        fragments, offset = [], start
        while True:
            item = _element_at(handle, offset, syntax.is_little_endian, True)
            if item is None or item[0] not in (0xFFFEE000, 0xFFFEE0DD) or item[2] + item[1] > size:
                raise CorruptFileError(f"{path}: compressed pixel data cut short or damaged (file of {size} bytes)")
            if item[0] == 0xFFFEE0DD:
                break
            fragments.append((item[2], item[1]))
            offset = item[2] + item[1]
        if len(fragments) < 2 or fragments[-1][1] == 0:  # the first item is the offset table
            raise CorruptFileError(f"{path}: compressed pixel data holds no image")
        if syntax in ENDS_WITH_EOI:
            value_end, length = fragments[-1][0] + fragments[-1][1], fragments[-1][1]
            handle.seek(value_end - min(length, 4))
            if not handle.read(min(length, 4)).rstrip(b"\0").endswith(b"\xff\xd9"):
                raise CorruptFileError(f"{path}: compressed pixel data cut short (no end-of-image marker)")


def may_hold_image(path: Path) -> bool:
    """Whether the file at ``path`` may be a DICOM image: it has the DICOM preamble ("DICM" at byte 128) and is
    not a DICOMDIR index. Other files (notes, label tables, indexes) are no part of a series."""
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_headers(
    files: list[Path], known: dict[Path, DicomHeader] | None = None
) -> tuple[list[DicomHeader], list[Path]]:
    """Read the headers (no pixels) of the DICOM files among ``files``; returns headers and ignored paths.

    Files without the DICOM preamble are ignored; a file with the preamble that fails to parse is corrupt.
    ``known`` headers (read before, e.g. while grouping files by study) are used as they are.
    """
    headers, ignored = [], []
    known = known or {}
    for path in files:
        header = known.get(path)
        if header is None:
            if not may_hold_image(path):
                ignored.append(path)
                continue
            try:
                header = read_header(path)
            except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError) as exc:
                raise CorruptFileError(f"{path}: corrupt DICOM file ({exc})") from exc
        if "SOPInstanceUID" not in header.ds or "SeriesInstanceUID" not in header.ds:
            raise CorruptFileError(f"{path}: corrupt DICOM file (truncated: no SOP/series instance UID)")
        headers.append(header)
    return headers, ignored


def _is_localizer(ds: pydicom.Dataset) -> bool:
    image_type = [str(v).upper() for v in getattr(ds, "ImageType", None) or []]
    return "LOCALIZER" in image_type or "SCOUT" in image_type or "TOPOGRAM" in image_type


def _orientation(ds: pydicom.Dataset, path: Path) -> np.ndarray | None:
    """The row and column direction cosines (2 x 3) of an image (single-frame, or shared by the frames of a
    multi-frame one); None when absent, :class:`HeaderError` when not two unit vectors at right angles."""
    iop = header_floats(ds, "ImageOrientationPatient", 6, path)
    if iop is None:
        try:
            shared = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        except (AttributeError, IndexError, TypeError):
            return None
        iop = header_floats(shared, "ImageOrientationPatient", 6, path)
        if iop is None:
            return None
    orientation = np.asarray(iop).reshape(2, 3)
    norms = np.linalg.norm(orientation, axis=1)
    if np.any(np.abs(norms - 1) > 0.01) or abs(float(orientation[0] @ orientation[1])) > 0.01:
        raise HeaderError(f"{path}: ImageOrientationPatient {list(iop)} is not two unit vectors at right angles")
    return orientation


def _frames(header: DicomHeader) -> int:
    try:
        return max(int(getattr(header.ds, "NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError) as exc:
        raise HeaderError(f"{header.path}: invalid NumberOfFrames ({exc})") from exc


def _series_name(header: DicomHeader) -> str:
    return f"series {header.series_uid}" if header.series_uid else "the CT series (no SeriesInstanceUID)"


def _series_images(members: list[DicomHeader]) -> tuple[list[DicomHeader], list[str], str]:
    """The images of one CT series that can form the axial volume, the warnings about images left out, and why
    none can ("" when some can). Localizers (by ImageType) are left out, whatever the file order."""
    members = sorted(members, key=lambda h: str(h.path))
    images = [h for h in members if not _is_localizer(h.ds)]
    warnings = []
    if len(images) < len(members):
        left_out = len(members) - len(images)
        warnings.append(f"{left_out} localizer image{'s' * (left_out > 1)} in the CT series left out")
    if not images:
        return [], warnings, f"{_series_name(members[0])}: localizer images only"
    orientations = [_orientation(h.ds, h.path) for h in images]
    if all(o is None for o in orientations):
        return [], warnings, f"{_series_name(images[0])}: no ImageOrientationPatient, slice geometry unknown"
    normal = np.cross(*next(o for o in orientations if o is not None))
    if abs(normal[2]) < 0.8:
        return [], warnings, f"{_series_name(images[0])}: not axial (a sagittal or coronal reformat)"
    return images, warnings, ""


def choose_ct_series(headers: list[DicomHeader], source: Path) -> tuple[list[DicomHeader], list[str]]:
    """Pick the axial CT series with the most images (localizer images left out, with a warning); reject non-CT
    inputs, localizers, reformats and series without orientation with a reason that does not depend on file
    order. Returns the series' images and the warnings."""
    if not headers:
        raise EmptyInputError(f"{source}: no DICOM files found")
    series: dict[str, list[DicomHeader]] = defaultdict(list)
    for header in headers:
        if str(getattr(header.ds, "Modality", "")) == "CT":
            series[header.series_uid].append(header)
    if not series:
        modalities = sorted({str(getattr(h.ds, "Modality", "") or "none") for h in headers})
        raise NotCTError(f"{source}: no CT images (modality {', '.join(modalities)}); ctriage reads chest CT only")
    candidates, reasons = [], []
    for uid in sorted(series):
        images, warnings, reason = _series_images(series[uid])
        if reason:
            reasons.append(reason)
        else:
            candidates.append((sum(_frames(h) for h in images), uid, images, warnings))
    if not candidates:
        error = HeaderError if any("ImageOrientationPatient" in r for r in reasons) else NotCTError
        raise error(f"{source}: no axial CT series: {'; '.join(reasons)}")
    _, _, images, warnings = max(candidates, key=lambda item: item[:2])
    return images, warnings


def _meta(ds: pydicom.Dataset, source: Path) -> StudyMeta:
    def text(keyword: str) -> str:
        value = getattr(ds, keyword, "")
        return "" if value is None else str(value)

    return StudyMeta(
        patient_id=text("PatientID"),
        patient_name=text("PatientName"),
        patient_sex=text("PatientSex"),
        patient_age=text("PatientAge"),
        study_instance_uid=text("StudyInstanceUID"),
        series_instance_uid=text("SeriesInstanceUID"),
        study_date=text("StudyDate"),
        study_description=text("StudyDescription"),
        series_description=text("SeriesDescription"),
        accession_number=text("AccessionNumber"),
        manufacturer=text("Manufacturer"),
        source_path=str(source),
        source_format="dicom",
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else "",
    )


def _decoding_plugin(transfer_syntax: pydicom.uid.UID) -> str:
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(f"transfer syntax {transfer_syntax} is not supported") from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"no installed decoder for transfer syntax {transfer_syntax.name} ({transfer_syntax}); "
            f"missing: {'; '.join(decoder.missing_dependencies)}"
        )
    for plugin in PREFERRED_PLUGINS:
        if plugin in decoder.available_plugins:
            return plugin
    return ""


def _check_gaps(positions_mm: np.ndarray, source: Path) -> float:
    if len(positions_mm) < MIN_SLICES:
        raise IncompleteSeriesError(
            f"{source}: the CT series has {len(positions_mm)} slices; "
            f"at least {MIN_SLICES} are needed for a chest study"
        )
    gaps = np.diff(positions_mm)
    if np.any(gaps < 1e-3):
        raise IncompleteSeriesError(f"{source}: two or more slices share one position (duplicate or mixed series)")
    median = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > GAP_TOLERANCE * median:
        kind = "missing slices" if gaps[worst] > median else "non-uniform slice gaps"
        raise IncompleteSeriesError(
            f"{source}: {kind}: gap of {gaps[worst]:.2f} mm after slice {worst + 1} "
            f"where the series spacing is {median:.2f} mm"
        )
    return float(np.mean(gaps))


def _pixel_spacing(ds: pydicom.Dataset, path: Path) -> tuple[float, float]:
    """(row, column) pixel spacing in mm; :class:`HeaderError` when absent, zero or negative."""
    spacing = header_floats(ds, "PixelSpacing", 2, path)
    if spacing is None:
        raise HeaderError(f"{path}: no PixelSpacing: the pixel size, and so every volume in mL, is unknown")
    if min(spacing) <= 0:
        raise HeaderError(f"{path}: PixelSpacing {list(spacing)} mm: a pixel size must be positive")
    return spacing[0], spacing[1]


def _thickness_mm(ds: pydicom.Dataset | None, path: Path) -> float | None:
    """SliceThickness in mm; None when absent, unreadable or not positive (the slice gap stands in for it)."""
    try:
        thickness = header_floats(ds, "SliceThickness", 1, path) if ds is not None else None
    except HeaderError:
        return None
    return thickness[0] if thickness and thickness[0] > 0 else None


def _slice_positions(members: list[DicomHeader], orientation: np.ndarray) -> np.ndarray:
    """Each slice's position (mm) along the slice normal, after checking every slice's header: orientation,
    position, pixel spacing and pixel description as the series' first slice, pixel data framing."""
    first = members[0]
    check_slice_header(first)
    spacing = _pixel_spacing(first.ds, first.path)
    normal = np.cross(orientation[0], orientation[1])
    positions = []
    for header in members:
        own = _orientation(header.ds, header.path)
        if own is None:
            raise HeaderError(f"{header.path}: slice has no ImageOrientationPatient")
        if np.abs(own - orientation).max() > ORIENTATION_TOLERANCE:
            raise IncompleteSeriesError(
                f"{header.path}: slice orientation {own.ravel().round(3).tolist()} differs from the series' "
                f"{orientation.ravel().round(3).tolist()} (another acquisition or a reformat mixed in)"
            )
        ipp = header_floats(header.ds, "ImagePositionPatient", 3, header.path)
        if ipp is None:
            raise HeaderError(f"{header.path}: slice has no ImagePositionPatient")
        if not np.allclose(_pixel_spacing(header.ds, header.path), spacing, rtol=1e-3):
            raise IncompleteSeriesError(
                f"{header.path}: pixel spacing {header.ds.PixelSpacing} differs from the series' {list(spacing)} mm"
            )
        check_slice_header(header, first)
        positions.append(float(np.dot(normal, ipp)))
    return np.asarray(positions)


def _load_single_frame_series(
    members: list[DicomHeader], source: Path, workers: int | None, first: FirstSlices | None, warnings: list[str]
) -> CTVolume:
    orientation = next(o for o in (_orientation(h.ds, h.path) for h in members) if o is not None)
    normal = np.cross(orientation[0], orientation[1])
    positions = _slice_positions(members, orientation)
    order = np.argsort(positions)
    members = [members[i] for i in order]
    positions_mm = positions[order]
    slice_gap = _check_gaps(positions_mm, source)
    step = normal
    if normal[2] > 0:  # stack head to feet, as canonical z runs, so that reorienting needs no copy of the volume
        members, step = members[::-1], -normal
    top = members[0].ds
    warnings = warnings + slice_warnings(slice_gap, _thickness_mm(top, members[0].path), source)
    plugin = _decoding_plugin(transfer_syntax(members[0]))
    row_mm, col_mm = _pixel_spacing(top, members[0].path)
    origin = np.asarray(header_floats(top, "ImagePositionPatient", 3, members[0].path))
    # array axes (slice, row, column): along a row index we move down a column, i.e. along IOP[3:6]
    affine = affine_from_lps(origin, np.stack([step, orientation[1], orientation[0]]), (slice_gap, row_mm, col_mm))
    shape = (len(members), int(top.Rows), int(top.Columns))

    def decoder(indices: list[int]) -> Iterator[np.ndarray]:
        sources = [slice_source(members[i]) for i in indices]  # pixel descriptions checked above
        yield from decode_series(sources, plugin, workers)

    now = slice(None)
    if first is not None and is_canonical(affine):  # stack indices are the volume's z: the rest can wait
        now = first((slice_gap, row_mm, col_mm))
    missing = np.ones(len(members), bool)
    missing[now] = False
    stack = np.empty(shape, np.int16)
    decoded = [int(i) for i in np.flatnonzero(~missing)]
    for index, hu_slice in zip(decoded, decoder(decoded), strict=True):
        stack[index] = hu_slice
    check_hounsfield(stack[now], source)
    hu, affine, spacing = to_canonical(stack, affine)  # the stack itself where slices are missing
    return CTVolume(hu=hu, spacing_mm=spacing, affine=affine, meta=_meta(top, source),
                    slice_files=[h.path for h in members], missing=missing, decoder=decoder, warnings=warnings)


def _functional_group(ds: pydicom.Dataset, frame: pydicom.Dataset, name: str) -> pydicom.Dataset | None:
    """The item of the functional group ``name`` of one frame: its own, else the shared one; None when neither."""
    for groups in (frame, getattr(ds, "SharedFunctionalGroupsSequence", [None])[0]):
        sequence = getattr(groups, name, None) if groups is not None else None
        if sequence:
            return sequence[0]
    return None


def _load_multiframe(header: DicomHeader, source: Path, warnings: list[str]) -> CTVolume:
    path = header.path
    check_slice_header(header)
    ds = pydicom.dcmread(path)
    try:
        plugin = _decoding_plugin(transfer_syntax(header))
        frames = pixel_array(ds, decoding_plugin=plugin) if plugin else ds.pixel_array
    except UnsupportedTransferSyntaxError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"{path}: pixel data cannot be decoded ({exc})") from exc
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
    if len(per_frame) != len(frames):
        raise HeaderError(f"{path}: {len(per_frame)} per-frame functional groups for {len(frames)} frames")
    orientation = _orientation(ds, path)
    normal = np.cross(orientation[0], orientation[1])
    positions, rescales = [], []
    for index, frame in enumerate(per_frame):
        plane = _functional_group(ds, frame, "PlanePositionSequence")
        ipp = header_floats(plane, "ImagePositionPatient", 3, path) if plane is not None else None
        if ipp is None:
            raise HeaderError(f"{path}: frame {index + 1} has no ImagePositionPatient")
        positions.append(ipp)
        transform = _functional_group(ds, frame, "PixelValueTransformationSequence")
        rescales.append(_rescale(transform if transform is not None else ds, path))  # legacy: top-level tags
    positions = np.asarray(positions)
    projected = positions @ normal
    order = np.argsort(projected)
    slice_gap = _check_gaps(projected[order], source)
    measures = _functional_group(ds, per_frame[0], "PixelMeasuresSequence")
    row_mm, col_mm = _pixel_spacing(measures if measures is not None else ds, path)
    warnings = warnings + slice_warnings(slice_gap, _thickness_mm(measures, path), source)
    stack = np.stack([to_hu(frames[i], *rescales[i]) for i in order])
    check_hounsfield(stack, source)
    affine = affine_from_lps(
        positions[order[0]], np.stack([normal, orientation[1], orientation[0]]), (slice_gap, row_mm, col_mm)
    )
    hu, affine, spacing = to_canonical(stack, affine)
    return CTVolume(hu=hu, spacing_mm=spacing, affine=affine, meta=_meta(ds, source), warnings=warnings)


def load_dicom_series(
    files: list[Path],
    source: Path,
    workers: int | None = None,
    headers: dict[Path, DicomHeader] | None = None,
    first: FirstSlices | None = None,
) -> CTVolume:
    """Load the axial CT series among ``files`` as a canonical HU volume.

    Slices are ordered by their position along the slice normal (never by file name), rescale slope and
    intercept are applied, and pixel data are decoded by ``workers`` processes (default: one per core). With
    ``first`` (voxel spacing (z, y, x) mm -> the z slices to decode now), the other slices of a series stored
    in canonical order are decoded when they are first read (see :class:`CTVolume`); every slice's header and
    pixel data framing are checked before anything is decoded, and the decoded values must look like HU.
    """
    members, warnings = choose_ct_series(read_headers(files, headers)[0], source)
    if len(members) == 1 and _frames(members[0]) > 1:
        return _load_multiframe(members[0], source, warnings)
    if len(members) == 1:
        check_slice_header(members[0])  # a damaged file is named as such, not as a 2D image
        raise NotVolumeError(f"{source}: a single 2D CT image; a 3D series of slices is needed")
    return _load_single_frame_series(members, source, workers, first, warnings)
