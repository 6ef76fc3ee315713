"""Whole-study quality on real chest CTs (COVID-CT-MD P001, cap001, normal002, Lung-PET-CT-Dx A0001) and on
the bundled sample.

The regression figures below are the ones measured when the lesion model was committed (see docs/models.md and
the README's table of real studies, `python benchmarks/real_studies.py`); a change that lowers them fails here.
The lesion model never saw P001, cap001 or normal002; A0001 was among its lesion-free training CTs.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctriage.evaluate.metrics import dice
from ctriage.evaluate.slices import marked_attenuation, marked_slices, read_slice_labels, slice_agreement
from ctriage.lesions import segment_lesions
from ctriage.lungs import dense_lung_region, segment_lungs
from ctriage.pipeline import analyze_path, analyze_volume, lesions_in_lungs
from ctriage.preprocess import WorkGrid
from tests.conftest import A0001_DICOM, CAP001, NORMAL002_DICOM, P001_DICOM, P001_LABELS, REPO, require

# reached: 72 / 80 labelled slices carry lesion, 64 / 68 unlabelled ones do not; one slice of slack each
P001_MIN_SENSITIVITY = 71 / 80
P001_MIN_SPECIFICITY = 63 / 68
# cap001 (community-acquired pneumonia): 49 of its 69 slices labelled clear carry no lesion; one slice of slack
CAP001_MIN_SPECIFICITY = 48 / 69


@pytest.fixture(scope="module")
def p001_result():
    return analyze_path(require(P001_DICOM))


@pytest.fixture(scope="module")
def a0001_result():
    return analyze_path(require(A0001_DICOM))


@pytest.fixture(scope="module")
def cap001_result():
    return analyze_path(require(CAP001) / "dicom")


@pytest.fixture(scope="module")
def cap001_reference(cap001_result):
    """cap001's radiologist infection label per canonical slice (bool (z,))."""
    return read_slice_labels(require(CAP001 / "slice_labels.csv"), cap001_result.volume.slice_files)


@pytest.fixture(scope="module")
def normal002_result():
    return analyze_path(require(NORMAL002_DICOM))


def test_p001_lungs_contain_the_lesions(p001_result):
    """The lung mask keeps diseased lung: of the lesion model's voxels in the lungs and the dense-lung region
    beside them, >= 95 % end inside the final lung mask (measured 0.984; the rest are slivers under 5 mm thick
    along the chest wall and findings beside the heart and the stomach, dropped as not lung), and every reported
    lesion voxel is inside the lungs."""
    result = p001_result
    volume = result.volume
    lung = result.lungs.left | result.lungs.right
    aerated = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm))
    candidates = aerated.combined | dense_lung_region(aerated, volume.hu).upsampled(volume.shape)
    predicted = segment_lesions(volume.hu, candidates, volume.spacing_mm).mask > 0
    inside = (predicted & lung).sum() / max(predicted.sum(), 1)
    assert inside >= 0.95, f"only {inside:.3f} of lesion voxels inside the lung mask"
    assert not (result.lesions.mask[~lung] > 0).any()
    left_ml, right_ml = result.severity.left.lung_ml, result.severity.right.lung_ml
    assert 2500 < left_ml < 3600 and 2500 < right_ml < 3600, (left_ml, right_ml)  # measured 3019 / 3092 mL
    assert result.severity.lesion_ml >= 60.0  # measured 61.9 mL: a severity tool must not under-report


def test_p001_slice_level_agreement(p001_result):
    reference = read_slice_labels(require(P001_LABELS), p001_result.volume.slice_files)
    agreement = slice_agreement(p001_result.lesions.mask, p001_result.volume.spacing_mm, reference)
    assert agreement.sensitivity >= P001_MIN_SENSITIVITY, agreement
    assert agreement.specificity >= P001_MIN_SPECIFICITY, agreement


def test_p001_lesions_mainly_in_lower_zones(p001_result):
    """Radiologists labelled mostly the lower lobes: the lower half of the lungs holds most lesion volume."""
    lung = p001_result.lungs.left | p001_result.lungs.right
    rows = np.flatnonzero(lung.any(axis=(1, 2)))
    middle = (rows.min() + rows.max()) // 2
    lesion = p001_result.lesions.mask > 0
    assert lesion[middle:].sum() > lesion[:middle].sum()


def test_p001_reads_as_covid(p001_result):
    identification = p001_result.identification
    assert identification is not None and identification.positive  # measured p = 0.61, threshold 0.40
    assert p001_result.severity.ct_category >= 1


def test_a0001_tumour_is_not_severe_covid(a0001_result, p001_result):
    """The adenocarcinoma study stays CT-1 with a small worse-lung ratio (measured 1.5 %) and scores below the
    COVID-19 study (measured p = 0.51 vs 0.61; it is still above the threshold, see docs/identification.md)."""
    severity = a0001_result.severity
    assert severity.ct_category <= 1
    assert severity.max_ratio < 0.05
    assert a0001_result.identification.probability < p001_result.identification.probability


def test_normal_chest_reads_normal(normal002_result):
    """COVID-CT-MD normal002 (normal, never trained on): CT-0, identification negative, no slice with lesion;
    the lung mask adds under 2 % beyond the aerated lung (measured 0.01 %) and no lesion voxel lies below the
    diaphragm (under the lowest aerated lung of its column)."""
    from ctriage.lungs import diaphragm_floor

    result = normal002_result
    volume = result.volume
    assert result.severity.ct_category == 0 and result.severity.lesion_ml == 0.0
    assert not result.identification.positive  # measured p = 0.11
    aerated = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm)).combined
    lung = result.lungs.left | result.lungs.right
    assert (lung & ~aerated).sum() < 0.02 * aerated.sum()
    floor = diaphragm_floor(aerated, min(volume.spacing_mm[1:]), closing_mm=0)
    below = np.arange(volume.shape[0])[:, None, None] > floor[None]
    assert not (below & (result.lesions.mask > 0)).any()
    agreement = slice_agreement(result.lesions.mask, volume.spacing_mm, np.zeros(volume.shape[0], bool))
    assert agreement.specificity >= 83 / 84, agreement  # measured 84 / 84


def test_cap001_slice_specificity_and_below_covid(cap001_result, cap001_reference, p001_result):
    """COVID-CT-MD cap001 (community-acquired pneumonia, never trained on): slice agreement with the
    radiologists' infection labels at the figures reached (sensitivity 15 / 15, specificity 49 / 69; below the
    0.85 aimed at, see docs/models.md) and an identification score below the COVID-19 study's."""
    agreement = slice_agreement(cap001_result.lesions.mask, cap001_result.volume.spacing_mm, cap001_reference)
    assert agreement.sensitivity >= 14 / 15, agreement
    assert agreement.specificity >= CAP001_MIN_SPECIFICITY, agreement
    assert cap001_result.identification.probability < p001_result.identification.probability


def test_cap001_clear_slices_marked_where_opacity_is(cap001_result, cap001_reference):
    """What the model marks on cap001's slices labelled clear has the attenuation of ground glass, as on its slices
    labelled infected, not of aerated lung (about -850 HU): these "false positives" are opacities outside the
    labelled rows (measured: median -558 HU, 2.76 mL per slice; labelled infected -480 HU, 2.94 mL), the reason
    why cap001's 0.85 is not reached (docs/models.md)."""
    volume, lesion = cap001_result.volume, cap001_result.lesions.mask
    marked = marked_slices(lesion, volume.spacing_mm)
    clear = marked_attenuation(lesion, volume.hu, volume.spacing_mm, marked & ~cap001_reference)
    infected = marked_attenuation(lesion, volume.hu, volume.spacing_mm, marked & cap001_reference)
    assert clear.slices >= 1  # measured 20 of 69
    assert -700 <= clear.hu_quartiles[1] <= -300 and -700 <= infected.hu_quartiles[1] <= -300
    assert clear.hu_quartiles[0] > -750  # three quarters of the marked voxels are denser than aerated lung
    assert clear.ml_per_slice > 0.5 * infected.ml_per_slice


def test_cap001_stomach_gas_is_not_lung(cap001_result):
    """cap001's last slices (4 mm) cut through the stomach and colon gas under the left dome, joined to the lung
    through the diaphragm's partial volume: none of it is lung (it was 123 mL of lung, with "lesion" on 6 of
    those slices, before the gas rule)."""
    lungs = cap001_result.lungs.combined
    assert not lungs[-5:].any()
    assert not (cap001_result.lesions.mask[-8:] > 0).any()


def test_bundled_sample_runs_end_to_end():
    result = analyze_path(REPO / "src" / "ctriage" / "testing" / "data" / "sample_ct.nii.gz")
    assert result.severity.lung_ml > 2000
    assert result.identification is not None
    # a reduced copy of P001 (RT-PCR positive, see SOURCE.md): it must read as COVID-19 with lesions
    assert result.identification.positive and result.severity.ct_category >= 1


def test_phantom_through_model(phantom):
    """The model runs on a synthetic volume: masks stay inside the lungs, severity is finite, and the result
    agrees with the phantom's truth (lungs, CT category, GGO volume)."""
    result = analyze_volume(phantom.volume)
    assert result.lesions.mask.shape == phantom.volume.shape
    assert not (result.lesions.mask[~(result.lungs.left | result.lungs.right)] > 0).any()
    assert 0.0 <= result.severity.max_ratio <= 1.0
    voxel_ml = phantom.volume.voxel_volume_ml
    truth_lung_ml = (phantom.lung_left.sum() + phantom.lung_right.sum()) * voxel_ml
    truth_ggo_ml = (phantom.lesion_labels == 1).sum() * voxel_ml
    assert dice(result.lungs.left, phantom.lung_left) > 0.95 and dice(result.lungs.right, phantom.lung_right) > 0.95
    assert result.severity.lung_ml == pytest.approx(truth_lung_ml, rel=0.05)
    assert result.severity.ct_category == 1  # a few small blobs: under 25 % of either lung
    assert 0.5 * truth_ggo_ml < result.severity.ggo_ml < 1.5 * truth_ggo_ml  # measured 9.5 of 11.7 mL


def test_lesions_in_lungs_keeps_dense_lung_and_drops_the_rest(phantom):
    """Lesion beside the aerated lung (the chest-wall consolidation) joins the lung and is kept; lesion in the
    mediastinum, between the lungs and nearer the body centre than any lung, is dropped."""
    volume = phantom.volume
    nz, ny, nx = volume.shape
    aerated = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm))
    labels = phantom.lesion_labels.copy()
    mediastinum = np.zeros(volume.shape, bool)
    mediastinum[nz // 2 - 3 : nz // 2 + 3, int(ny * 0.47) - 5 : int(ny * 0.47) + 5, nx // 2 - 5 : nx // 2 + 5] = True
    assert not (mediastinum & aerated.combined).any()
    labels[mediastinum] = 2
    beside = (phantom.lesion_labels > 0) & ~aerated.combined
    assert beside.sum() > 1000  # the threshold lung mask leaves the dense consolidation out
    lungs, kept, _ = lesions_in_lungs(aerated, labels, volume.hu, denoise=False)
    assert (kept[beside] > 0).mean() > 0.95 and lungs.left[beside].mean() > 0.95
    assert not kept[mediastinum].any() and not lungs.combined[mediastinum].any()


def test_thin_slices_are_analysed_on_a_2_mm_grid(phantom):
    """Each slice of the phantom doubled (1.25 mm): the model runs on every other slice, which are the original
    slices, so every slice gets the masks of its original and the volumes in mL match the original study."""
    from ctriage.io import CTVolume
    from ctriage.pipeline import analysis_slices

    thick = phantom.volume
    thin = CTVolume(np.repeat(thick.hu, 2, axis=0), (thick.spacing_mm[0] / 2, *thick.spacing_mm[1:]), thick.affine)
    assert analysis_slices(thin.spacing_mm) == slice(1, None, 2)
    assert analysis_slices(thick.spacing_mm) == slice(0, None, 1)
    thick_result, thin_result = analyze_volume(thick), analyze_volume(thin)
    assert thin_result.lesions.mask.shape == thin.shape
    assert np.array_equal(thin_result.lesions.mask, np.repeat(thick_result.lesions.mask, 2, axis=0))
    assert np.array_equal(thin_result.lungs.left, np.repeat(thick_result.lungs.left, 2, axis=0))
    assert thin_result.severity.lung_ml == pytest.approx(thick_result.severity.lung_ml)
    assert thin_result.severity.lesion_ml == pytest.approx(thick_result.severity.lesion_ml)
