"""Results as DICOM for the PACS (highdicom): SEG of lesion and lung masks, a measurement report SR, and a
secondary-capture image of the severity projection.

All three reference the analysed CT series, so a PACS files them in the same study. Masks are in ctriage's
canonical (z, y, x) grid; they are mapped back onto each source slice's stored pixel grid before encoding.

A re-analysis replaces the objects sent before: each new object goes into the series of the one it replaces with
the next instance number, the new SR lists the SR it supersedes as its predecessor document, and an IHE IOCM
rejection note (a key object selection document titled "Rejected for Quality Reasons") lists every superseded SEG,
SR and SC, so that a PACS that follows IOCM hides them and any other shows which objects are withdrawn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import ctriage
from ctriage.labels import LesionLabel, label_mask
from ctriage.report.images import CONSOLIDATION_RGB, GGO_RGB, LUNG_EDGE_RGB

if TYPE_CHECKING:
    from ctriage.result import StudyResult
    from ctriage.severity import LungSeverity

MANUFACTURER = "ctriage"
PRIVATE_SCHEME = "99CTRIAGE"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER, SC_SERIES_NUMBER, REJECTION_SERIES_NUMBER = 9701, 9702, 9703, 9704
OUTPUT_FILES = {"SEG": "seg.dcm", "SR": "sr.dcm", "OT": "sc.dcm", "KO": "rejected.dcm"}  # by Modality
TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)

GGO = CodedConcept("GGO", PRIVATE_SCHEME, "Ground-glass opacity")
CONSOLIDATION = CodedConcept("95436008", "SCT", "Lung consolidation")
RIGHT_LUNG = CodedConcept("3341006", "SCT", "Right lung")
LEFT_LUNG = CodedConcept("44029006", "SCT", "Left lung")
CHEST_CT = CodedConcept("24627-2", "LN", "CT Chest")
UCUM_ML = CodedConcept("mL", "UCUM", "milliliter")
UCUM_PERCENT = CodedConcept("%", "UCUM", "percent")
UCUM_NONE = CodedConcept("1", "UCUM", "no units")
GGO_VOLUME = CodedConcept("ggo-volume", PRIVATE_SCHEME, "Ground-glass opacity volume")
CONSOLIDATION_VOLUME = CodedConcept("consolidation-volume", PRIVATE_SCHEME, "Consolidation volume")
LESION_PERCENT = CodedConcept("lesion-percent", PRIVATE_SCHEME, "Lesion volume, percent of lung")
COVID_PROBABILITY = CodedConcept("covid19-probability", PRIVATE_SCHEME, "COVID-19 probability")
CT_CATEGORY = CodedConcept("ct-category", PRIVATE_SCHEME, "CT severity category (CT-0..4)")


def _algorithm() -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name="ctriage", version=ctriage.__version__, family=codes.cid7162.ArtificialIntelligence
    )


def read_sources(slice_files: list[Path]) -> list[pydicom.Dataset]:
    """Headers (no pixel data) of the source slices, in canonical z order.

    Some anonymisers blank SOPClassUID / SOPInstanceUID in the dataset but keep them in the file meta; those are
    restored, since the SEG and SR reference the sources by them. Type 2 patient / study attributes that were
    removed altogether are added empty, as the standard allows and highdicom needs to copy them.
    """
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in slice_files]
    for ds in sources:
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, None)
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    return sources


def to_stored_grid(mask: np.ndarray, affine: np.ndarray, source: pydicom.Dataset) -> np.ndarray:
    """Reorient a canonical (z, y, x) mask to the stored (row, column) pixel grid of ``source``.

    The canonical in-plane axes are permutations / flips of the stored ones (see ``io.orientation``), found by
    comparing the affine's y and x directions with the source's ImageOrientationPatient.
    """
    iop = np.asarray(source.ImageOrientationPatient, float)
    along_columns, along_rows = iop[:3], iop[3:]  # direction of increasing column index / row index
    y_dir = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    x_dir = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    out = mask
    if abs(y_dir @ along_rows) < abs(y_dir @ along_columns):
        out = out.transpose(0, 2, 1)
        y_dir, x_dir = x_dir, y_dir
    if y_dir @ along_rows < 0:
        out = out[:, ::-1, :]
    if x_dir @ along_columns < 0:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def _segment(
    number: int, label: str, category: Any, kind: Any, color: tuple[int, int, int]
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(),
        display_color=hd.color.CIELabColor.from_rgb(*color),
    )


SEGMENTS = (  # number, label, category, type, display colour (lesion colours as in the overlay PNGs)
    (1, "Ground-glass opacity", codes.SCT.MorphologicallyAbnormalStructure, GGO, GGO_RGB),
    (2, "Consolidation", codes.SCT.MorphologicallyAbnormalStructure, CONSOLIDATION, CONSOLIDATION_RGB),
    (3, "Right lung", codes.SCT.Organ, RIGHT_LUNG, LUNG_EDGE_RGB),
    (4, "Left lung", codes.SCT.Organ, LEFT_LUNG, (60, 220, 140)),
)


def _series(replaces: pydicom.Dataset | None) -> tuple[str, int]:
    """Series UID and instance number of a new object: the replaced object's series and the next number."""
    if replaces is None:
        return generate_uid(), 1
    return str(replaces.SeriesInstanceUID), int(replaces.get("InstanceNumber") or 0) + 1


def _segment_masks(result: StudyResult) -> tuple[Callable[[], np.ndarray], ...]:
    """The masks of ``SEGMENTS`` in order, each computed when asked for (one full-size mask at a time)."""
    return (
        lambda: label_mask(result.lesions.mask, LesionLabel.GGO),
        lambda: label_mask(result.lesions.mask, LesionLabel.CONSOLIDATION),
        lambda: result.lungs.right,
        lambda: result.lungs.left,
    )


def _slices_with_segments(result: StudyResult) -> slice:
    """The z range holding any lung or lesion voxel (every slice when there is none)."""
    n_slices = result.lungs.labels.shape[0]
    per_slice = np.count_nonzero(result.lungs.labels.reshape(n_slices, -1), axis=1)
    per_slice += np.count_nonzero(result.lesions.mask.reshape(n_slices, -1), axis=1)
    present = np.flatnonzero(per_slice)
    return slice(int(present[0]), int(present[-1]) + 1) if present.size else slice(0, n_slices)


def build_seg(
    result: StudyResult, sources: list[pydicom.Dataset], replaces: pydicom.Dataset | None = None
) -> hd.seg.Segmentation:
    """DICOM SEG with GGO, consolidation, right and left lung as binary segments.

    Only the source slices from the first to the last holding a segment are referenced, and only frames where a
    segment is present are stored (``omit_empty_frames``): a third less than every slice for every segment on a
    chest CT. The stacked array is built straight in the stored pixel grid, one segment at a time.
    """
    span = _slices_with_segments(result)
    first = to_stored_grid(result.lesions.mask[span][:1], result.volume.affine, sources[0])
    stored = np.zeros((span.stop - span.start, *first.shape[1:], len(SEGMENTS)), np.uint8)
    for index, mask in enumerate(_segment_masks(result)):
        stored[..., index] = to_stored_grid(mask()[span], result.volume.affine, sources[0])
    series_uid, instance_number = _series(replaces)
    return hd.seg.Segmentation(
        source_images=sources[span],
        pixel_array=stored,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(*s) for s in SEGMENTS],
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="ctriage",
        software_versions=ctriage.__version__,
        device_serial_number="0",
        series_description="ctriage lesions and lungs",
        omit_empty_frames=True,
    )


def _device_observer() -> hd.sr.ObserverContext:
    """ctriage as the observing device of an SR or a key object selection."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="ctriage", manufacturer_name=MANUFACTURER
        ),
    )


def _lung_group(
    lung: LungSeverity, seg: hd.seg.Segmentation, segment_number: int, site: CodedConcept
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """Measurements of one lung referencing its SEG segment."""
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=site.meaning),
        referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, segment_number),
        finding_type=codes.SCT.Lung,
        finding_sites=[hd.sr.FindingSite(site)],
        measurements=[
            hd.sr.Measurement(codes.SCT.Volume, float(lung.lung_ml), UCUM_ML),
            hd.sr.Measurement(GGO_VOLUME, float(lung.ggo_ml), UCUM_ML),
            hd.sr.Measurement(CONSOLIDATION_VOLUME, float(lung.consolidation_ml), UCUM_ML),
            hd.sr.Measurement(LESION_PERCENT, 100.0 * float(lung.ratio), UCUM_PERCENT),
        ],
    )


def _study_group(result: StudyResult) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """COVID-19 probability (where the study was identified) and CT-0..4 category of the whole study."""
    measurements = []
    if result.identification is not None:
        measurements.append(hd.sr.Measurement(COVID_PROBABILITY, float(result.identification.probability), UCUM_NONE))
    category = int(result.severity.ct_category)
    evaluations = [hd.sr.QualitativeEvaluation(CT_CATEGORY, CodedConcept(f"CT-{category}", PRIVATE_SCHEME,
                                                                         f"CT-{category}"))]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Study"),
        finding_type=codes.SCT.Lung,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )


def build_sr(
    result: StudyResult,
    sources: list[pydicom.Dataset],
    seg: hd.seg.Segmentation,
    replaces: pydicom.Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Measurement report (TID 1500): per-lung volumes and lesion share (referencing the SEG), scores; the SR it
    ``replaces`` (a header is enough) becomes its predecessor document."""
    groups: list[Any] = [
        _lung_group(result.severity.right, seg, 3, RIGHT_LUNG),
        _lung_group(result.severity.left, seg, 4, LEFT_LUNG),
        _study_group(result),
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device_observer()),
        procedure_reported=CHEST_CT,
        imaging_measurements=groups,
    )
    series_uid, instance_number = _series(replaces)
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg],
        content=report,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        previous_versions=None if replaces is None else [replaces],
        manufacturer=MANUFACTURER,
        series_description="ctriage measurements",
        is_complete=True,
    )


def build_sc(
    image_rgb: np.ndarray, reference: pydicom.Dataset, replaces: pydicom.Dataset | None = None
) -> hd.sc.SCImage:
    """Secondary capture of an RGB summary image (the severity projection) in the study of ``reference``."""
    series_uid, instance_number = _series(replaces)
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=np.ascontiguousarray(image_rgb[..., :3], dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        series_description="ctriage severity projection",
    )


def build_rejection_note(
    superseded: list[pydicom.Dataset], replaces: pydicom.Dataset | None = None
) -> hd.ko.KeyObjectSelectionDocument:
    """IHE IOCM rejection note for the ``superseded`` results (headers are enough, all of one study): a key object
    selection document titled (113001, DCM) "Rejected for Quality Reasons", in the series of the note it
    ``replaces``."""
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.RejectedForQualityReasons,
        referenced_objects=superseded,
        observer_device_context=_device_observer(),
        description="ctriage results superseded by a re-analysis of the study",
    )
    series_uid, instance_number = _series(replaces)
    return hd.ko.KeyObjectSelectionDocument(
        evidence=superseded,
        content=content,
        series_instance_uid=series_uid,
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
    )


def build_dicom_outputs(
    result: StudyResult,
    slice_files: list[Path],
    summary_rgb: np.ndarray | None = None,
    replaces: dict[str, pydicom.Dataset] | None = None,
) -> list[pydicom.Dataset]:
    """SEG, SR and (with ``summary_rgb``) a secondary capture for a study read from single-frame DICOM.

    ``replaces``: the objects of an earlier analysis that these replace, by Modality ("SEG", "SR", "OT", and "KO"
    for its rejection note); with any SEG, SR or SC among them, a rejection note listing those comes last.
    """
    if len(slice_files) != result.lesions.mask.shape[0]:
        raise ValueError(f"{len(slice_files)} source files for {result.lesions.mask.shape[0]} slices")
    replaces = replaces or {}
    sources = read_sources(slice_files)
    seg = build_seg(result, sources, replaces.get("SEG"))
    outputs: list[pydicom.Dataset] = [seg, build_sr(result, sources, seg, replaces.get("SR"))]
    if summary_rgb is not None:
        outputs.append(build_sc(summary_rgb, sources[0], replaces.get("OT")))
    superseded = [replaces[modality] for modality in ("SEG", "SR", "OT") if modality in replaces]
    if superseded:
        outputs.append(build_rejection_note(superseded, replaces.get("KO")))
    return outputs


def write_dicom_outputs(datasets: list[pydicom.Dataset], outdir: Path) -> list[Path]:
    """Save ``datasets`` under ``outdir`` by Modality as ``OUTPUT_FILES`` names them; returns the paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = outdir / OUTPUT_FILES[str(ds.Modality)]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
