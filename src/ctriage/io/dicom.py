"""DICOM series discovery, validation and decoding to HU."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, pixel_array

from ctriage.io.decode import SliceSource, decode_series, to_hu
from ctriage.io.errors import (
    CorruptFileError,
    EmptyInputError,
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


def slice_source(header: DicomHeader) -> SliceSource:
    """What a decoding worker needs to decode the single-frame slice of ``header`` without parsing it again."""
    ds, syntax = header.ds, header.ds.file_meta.TransferSyntaxUID
    description: dict[str, int | str] = {
        "rows": int(ds.Rows), "columns": int(ds.Columns), "samples_per_pixel": int(ds.SamplesPerPixel),
        "bits_allocated": int(ds.BitsAllocated), "bits_stored": int(ds.BitsStored),
        "pixel_representation": int(ds.PixelRepresentation),
        "photometric_interpretation": str(ds.PhotometricInterpretation), "number_of_frames": 1,
    }
    return SliceSource(
        path=header.path,
        pixel_offset=header.pixel_offset if syntax.is_encapsulated and not syntax.is_deflated else None,
        transfer_syntax=str(syntax),
        description=description,
        slope=float(getattr(ds, "RescaleSlope", 1) or 1),
        intercept=float(getattr(ds, "RescaleIntercept", 0) or 0),
    )


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
    image_type = [str(v).upper() for v in getattr(ds, "ImageType", [])]
    return "LOCALIZER" in image_type or "SCOUT" in image_type or "TOPOGRAM" in image_type


def _orientation(ds: pydicom.Dataset) -> np.ndarray | None:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None:
        shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
        try:
            iop = shared[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (AttributeError, IndexError, TypeError):
            return None
    return np.asarray([float(v) for v in iop]).reshape(2, 3)


def choose_ct_series(headers: list[DicomHeader], source: Path) -> list[DicomHeader]:
    """Pick the axial CT series with the most images; reject non-CT inputs and localizers with a clear reason."""
    if not headers:
        raise EmptyInputError(f"{source}: no DICOM files found")
    series: dict[str, list[DicomHeader]] = defaultdict(list)
    for header in headers:
        series[header.series_uid].append(header)
    modalities = sorted({str(getattr(h.ds, "Modality", "?")) for h in headers})
    candidates = []
    for members in series.values():
        first = members[0].ds
        if str(getattr(first, "Modality", "")) != "CT" or _is_localizer(first):
            continue
        orientation = _orientation(first)
        if orientation is None:
            continue
        normal = np.cross(orientation[0], orientation[1])
        if abs(normal[2]) < 0.8:  # sagittal / coronal reformats are not the axial acquisition
            continue
        frames = sum(int(getattr(h.ds, "NumberOfFrames", 1) or 1) for h in members)
        candidates.append((frames, members))
    if not candidates:
        if "CT" not in modalities:
            raise NotCTError(f"{source}: no CT images (modality {', '.join(modalities)}); ctriage reads chest CT only")
        raise NotCTError(f"{source}: the CT images are localizers or non-axial reformats, no axial CT series found")
    return max(candidates, key=lambda item: item[0])[1]


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


def _load_single_frame_series(
    members: list[DicomHeader], source: Path, workers: int | None, first: FirstSlices | None
) -> CTVolume:
    orientation = _orientation(members[0].ds)
    normal = np.cross(orientation[0], orientation[1])
    positions = []
    for header in members:
        ipp = getattr(header.ds, "ImagePositionPatient", None)
        if ipp is None:
            raise IncompleteSeriesError(f"{header.path}: slice has no ImagePositionPatient")
        positions.append(float(np.dot(normal, [float(v) for v in ipp])))
    order = np.argsort(positions)
    members = [members[i] for i in order]
    positions_mm = np.asarray(positions)[order]
    slice_gap = _check_gaps(positions_mm, source)
    step = normal
    if normal[2] > 0:  # stack head to feet, as canonical z runs, so that reorienting needs no copy of the volume
        members, step = members[::-1], -normal
    top = members[0].ds
    plugin = _decoding_plugin(top.file_meta.TransferSyntaxUID)

    def source_of(index: int) -> SliceSource:  # read from the header only for the slices decoded
        try:
            return slice_source(members[index])
        except AttributeError as exc:
            raise CorruptFileError(f"{members[index].path}: the slice lacks its pixel description ({exc})") from exc

    row_mm, col_mm = (float(v) for v in top.PixelSpacing)
    origin = np.asarray([float(v) for v in top.ImagePositionPatient])
    # array axes (slice, row, column): along a row index we move down a column, i.e. along IOP[3:6]
    affine = affine_from_lps(origin, np.stack([step, orientation[1], orientation[0]]), (slice_gap, row_mm, col_mm))
    shape = (len(members), int(top.Rows), int(top.Columns))

    def decoder(indices: list[int]) -> Iterator[np.ndarray]:
        sources = [source_of(i) for i in indices]
        for index, hu_slice in zip(indices, decode_series(sources, plugin, workers), strict=True):
            if hu_slice.shape != shape[1:]:
                raise NotVolumeError(
                    f"{members[index].path}: slice of shape {hu_slice.shape} in a series of {shape[1:]} slices"
                )
            yield hu_slice

    missing = np.zeros(len(members), bool)
    if first is not None and is_canonical(affine):  # stack indices are the volume's z: the rest can wait
        missing[:] = True
        missing[first((slice_gap, row_mm, col_mm))] = False
    stack = np.empty(shape, np.int16)
    now = [int(i) for i in np.flatnonzero(~missing)]
    for index, hu_slice in zip(now, decoder(now), strict=True):
        stack[index] = hu_slice
    hu, affine, spacing = to_canonical(stack, affine)  # the stack itself where slices are missing
    return CTVolume(hu=hu, spacing_mm=spacing, affine=affine, meta=_meta(top, source),
                    slice_files=[h.path for h in members], missing=missing, decoder=decoder)


def _load_multiframe(header: DicomHeader, source: Path) -> CTVolume:
    ds = pydicom.dcmread(header.path)
    try:
        plugin = _decoding_plugin(ds.file_meta.TransferSyntaxUID)
        frames = pixel_array(ds, decoding_plugin=plugin) if plugin else ds.pixel_array
    except UnsupportedTransferSyntaxError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"{header.path}: pixel data cannot be decoded ({exc})") from exc
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    orientation = _orientation(ds)
    normal = np.cross(orientation[0], orientation[1])
    positions = np.asarray([[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in per_frame])
    projected = positions @ normal
    order = np.argsort(projected)
    slice_gap = _check_gaps(projected[order], source)

    def group(frame_index: int, name: str):
        frame = per_frame[frame_index]
        return getattr(frame, name, None) or getattr(shared, name)

    slices = []
    for index in order:
        transform = group(int(index), "PixelValueTransformationSequence")[0]
        slices.append(to_hu(frames[index], float(transform.RescaleSlope), float(transform.RescaleIntercept)))
    row_mm, col_mm = (float(v) for v in group(0, "PixelMeasuresSequence")[0].PixelSpacing)
    affine = affine_from_lps(
        positions[order[0]], np.stack([normal, orientation[1], orientation[0]]), (slice_gap, row_mm, col_mm)
    )
    hu, affine, spacing = to_canonical(np.stack(slices), affine)
    return CTVolume(hu=hu, spacing_mm=spacing, affine=affine, meta=_meta(ds, source))


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
    in canonical order are decoded when they are first read (see :class:`CTVolume`).
    """
    members = choose_ct_series(read_headers(files, headers)[0], source)
    if len(members) == 1 and int(getattr(members[0].ds, "NumberOfFrames", 1) or 1) > 1:
        return _load_multiframe(members[0], source)
    if len(members) == 1:
        raise NotVolumeError(f"{source}: a single 2D CT image; a 3D series of slices is needed")
    return _load_single_frame_series(members, source, workers, first)
