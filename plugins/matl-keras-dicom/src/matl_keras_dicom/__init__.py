"""matl-keras-dicom: the `dicom_ct` dataset and the `logme` evaluator."""

__version__ = "0.1.0"
