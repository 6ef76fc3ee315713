"""One exception type per kind of bad input; the CLI maps them to exit code 2, the service to a failed job."""

__all__ = [  # every error here, exported as ``ctriage.<name>``
    "InputError", "InputNotFoundError", "EmptyInputError", "CorruptFileError", "NotCTError", "IncompleteSeriesError",
    "NotVolumeError", "UnsupportedTransferSyntaxError", "HeaderError", "NonFiniteValuesError", "NotHounsfieldError",
    "SliceThicknessError", "OutputError",
]


class InputError(Exception):
    """Base class: the input cannot be analysed; the message says why, in words for a user."""


class InputNotFoundError(InputError):
    """The path does not exist."""


class EmptyInputError(InputError):
    """A folder holds no image file ctriage can read."""


class CorruptFileError(InputError):
    """A file is not valid DICOM / NIfTI, or its pixel data cannot be read."""


class NotCTError(InputError):
    """The images are not CT (another modality, or no CT series found)."""


class IncompleteSeriesError(InputError):
    """Too few slices, missing slices or non-uniform gaps between slices."""


class NotVolumeError(InputError):
    """The image is 2D or otherwise not a 3D volume."""


class UnsupportedTransferSyntaxError(InputError):
    """No installed decoder can read the series' compressed pixel data."""


class HeaderError(InputError):
    """A DICOM / NIfTI header field the loader needs (geometry, pixel description, rescale) is missing or invalid."""


class NonFiniteValuesError(InputError):
    """The image holds NaN or infinite values, which have no Hounsfield unit."""


class NotHounsfieldError(InputError):
    """The values do not look like CT Hounsfield units (no air, e.g. raw values without their rescale)."""


class SliceThicknessError(InputError):
    """The slices are too thick or too far apart for lesions to be measured."""


class OutputError(InputError):
    """The output folder cannot be created or written, or its disk has too little free space."""
