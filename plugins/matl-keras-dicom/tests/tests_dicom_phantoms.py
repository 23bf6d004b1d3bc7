"""DICOM files written with pydicom: a chest phantom volume in HU."""

import numpy as np
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import generate_uid

SLOPE, INTERCEPT = 1.0, -1024.0


def chest_hu(size, z, slices, covid):
    """Body (soft tissue), two lungs (air-filled parenchyma, -850 HU) that
    shrink towards the ends of the volume, and for COVID a ground-glass
    patch."""
    yy, xx = np.mgrid[:size, :size] / size
    hu = np.full((size, size), -1000.0)
    hu[(yy - 0.5) ** 2 / 0.16 + (xx - 0.5) ** 2 / 0.2 < 1] = 40.0
    radius = 0.14 * np.sin(np.pi * (z + 0.5) / slices)
    for cx in (0.32, 0.68):
        hu[(yy - 0.5) ** 2 + (xx - cx) ** 2 < radius**2] = -850.0
    if covid:
        hu[(yy - 0.55) ** 2 + (xx - 0.28) ** 2 < (radius / 2) ** 2] = -400.0
    return hu


def write_slice(
    path,
    hu,
    patient,
    study,
    series,
    z,
    modality="CT",
    size=None,
    slope=SLOPE,
    intercept=INTERCEPT,
    orientation=(1, 0, 0, 0, 1, 0),
    pixel_data=True,
):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = int(z) + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(z) * 5.0]
    ds.ImageOrientationPatient = list(orientation)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    stored = np.round((hu - intercept) / slope).astype(np.int16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if pixel_data:
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_volume(folder, patient, covid, slices=6, size=64, study=None):
    """One patient's axial series (files named without extension)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = study or generate_uid()
    series = generate_uid()
    for z in range(slices):
        write_slice(
            str(folder / f"IM{z:04d}"),
            chest_hu(size, z, slices, covid),
            patient,
            study,
            series,
            z,
        )
    return study
