"""`dicom_ct` dataset: axial CT slices read from a folder tree of DICOM
files, in Hounsfield units, lung-windowed.

    CT_DATA = @dicom_ct()
    dicom_ct.root = '/data/ct_dicom'         # any tree; files need no extension
    dicom_ct.labels_csv = '/data/labels.csv' # omit for unlabelled (SSL) data
    dicom_ct.label_key = 'PatientID'         # or 'StudyInstanceUID'
    dicom_ct.slices = 'lung'                 # 'all', 'every', 'lung'

Per slice: HU = stored value x RescaleSlope + RescaleIntercept; the window
(default W 1500 / L -600, the lung window) maps [L - W/2, L + W/2] to
[0, 255]; the slice is resized to `size` x `size`. Only axial images
(ImageOrientationPatient within 10 degrees of the axial plane) are kept;
scouts and reformats are counted and left out.

Bad files are reported by name with the reason, and refused (default: the
error lists every one) or skipped with `on_bad_file = 'skip'`, as the
core's bad-image policy does: not a DICOM file; no pixel data; a transfer
syntax whose decoder is not installed; a modality other than CT; a slice
whose size differs from the rest of its series.

Splits are patient-disjoint: each PatientID goes to `train`, `val` or
`test` by a hash of the ID and `split_fractions`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from matl_keras.data.dataset import ArrayExamples
from matl_keras.data.dataset import Dataset
from matl_keras.errors import ConfigError
from matl_keras.errors import DataError

SLICES = ("all", "every", "lung")
ON_BAD_FILE = ("refuse", "skip")
LABEL_KEYS = ("PatientID", "StudyInstanceUID")
# Lung parenchyma in HU, for `slices='lung'`.
LUNG_HU = (-950.0, -400.0)


@dataclasses.dataclass
class _Slice:
    """What is kept of one file: its identity and its windowed, resized
    pixels (HU at full size are dropped as soon as they are read: a study
    has hundreds of 512x512 slices)."""

    path: str
    patient: str
    study: str
    series: str
    position: float
    shape: tuple[int, int]
    lung: float
    image: np.ndarray  # uint8 (size, size)


def hounsfield(dataset: Any) -> np.ndarray:
    """The slice's pixels in HU (float32)."""
    pixels = dataset.pixel_array.astype(np.float32)
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept


def window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> uint8: [level - width/2, level + width/2] to [0, 255]."""
    low = level - width / 2.0
    scaled = (hu - low) / width
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def is_axial(dataset: Any, tolerance_degrees: float = 10.0) -> bool:
    """True when the slice normal is within the tolerance of the z axis
    (files without ImageOrientationPatient are taken as axial)."""
    orientation = getattr(dataset, "ImageOrientationPatient", None)
    if orientation is None or len(orientation) != 6:
        return True
    row, col = (
        np.asarray(orientation[:3], float),
        np.asarray(orientation[3:], float),
    )
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm == 0:
        return True
    return abs(normal[2]) / norm >= np.cos(np.radians(tolerance_degrees))


def lung_fraction(hu: np.ndarray) -> float:
    """Fraction of the slice's pixels in the lung HU range."""
    return float(np.mean((hu >= LUNG_HU[0]) & (hu <= LUNG_HU[1])))


def _read(path: str) -> tuple[Any, str | None]:
    """`(dataset, None)` or `(None, reason)`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as e:  # noqa: BLE001 - truncated or corrupt files
        return None, f"unreadable DICOM ({type(e).__name__}: {e})"
    if "PixelData" not in ds:
        return None, "no pixel data"
    modality = getattr(ds, "Modality", None)
    if modality != "CT":
        return None, f"modality {modality!r}, not CT"
    return ds, None


def _pixels(ds: Any) -> tuple[np.ndarray | None, str | None]:
    try:
        return hounsfield(ds), None
    except Exception as e:  # noqa: BLE001 - RuntimeError, NotImplementedError...
        syntax = getattr(
            getattr(ds, "file_meta", None), "TransferSyntaxUID", None
        )
        name = getattr(syntax, "name", syntax)
        return None, (
            f"cannot decode transfer syntax {name} ({type(e).__name__}); "
            "install its pydicom decoder (e.g. pylibjpeg, gdcm)"
        )


def _split_of(patient: str, fractions: Mapping[str, float], seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    total = 0.0
    for name, fraction in fractions.items():
        total += fraction
        if point < total:
            return name
    return list(fractions)[-1]


class DicomCT(Dataset):
    """Axial CT slices from DICOM series.

    Args:
        root: str. Folder tree of DICOM files (any names, any depth).
        labels_csv: str or None. CSV with columns `label_key` and
            `label_column`; None: unlabelled (for SSL).
        label_key: str. `PatientID` or `StudyInstanceUID`.
        label_column: str. Column holding the class name.
        class_names: sequence of str. Classes, in label order.
        positive_class: str or None. The diagnosis class.
        window_width: float. Window width in HU (lung: 1500).
        window_level: float. Window level in HU (lung: -600).
        slices: str. `all`, `every` (every `every`-th slice of a series) or
            `lung` (slices with at least `min_lung_fraction` of their pixels
            in -950..-400 HU).
        every: int. Step for `slices='every'`.
        min_lung_fraction: float. Threshold for `slices='lung'`.
        size: int. Side the slices are resized to (the core resizes again
            to the model's input size).
        split_fractions: mapping. Split name -> fraction of patients.
        on_bad_file: str. `refuse` or `skip`.
        seed: int. Seed of the patient split.
    """

    def __init__(
        self,
        root: str | None = None,
        labels_csv: str | None = None,
        label_key: str = "PatientID",
        label_column: str = "label",
        class_names: tuple[str, ...] = ("NonCOVID", "COVID"),
        positive_class: str | None = "COVID",
        window_width: float = 1500.0,
        window_level: float = -600.0,
        slices: str = "all",
        every: int = 1,
        min_lung_fraction: float = 0.05,
        size: int = 256,
        split_fractions: Mapping[str, float] | None = None,
        on_bad_file: str = "refuse",
        seed: int = 0,
    ) -> None:
        if root is None:
            raise ConfigError(
                "dicom_ct: bind `dicom_ct.root` to the DICOM folder"
            )
        if not os.path.isdir(root):
            raise ConfigError(f"dicom_ct.root: {root!r} is not a folder")
        if label_key not in LABEL_KEYS:
            raise ConfigError(
                f"dicom_ct.label_key must be one of {LABEL_KEYS}. "
                f"Received: {label_key!r}"
            )
        if slices not in SLICES:
            raise ConfigError(
                f"dicom_ct.slices must be one of {SLICES}. Received: {slices!r}"
            )
        if every < 1:
            raise ConfigError(f"dicom_ct.every must be >= 1. Received: {every}")
        if not window_width > 0:
            raise ConfigError(
                "dicom_ct.window_width must be positive. "
                f"Received: {window_width}"
            )
        if on_bad_file not in ON_BAD_FILE:
            raise ConfigError(
                f"dicom_ct.on_bad_file must be one of {ON_BAD_FILE}. "
                f"Received: {on_bad_file!r}"
            )
        fractions = dict(split_fractions or {"train": 0.8, "val": 0.2})
        if (
            not fractions
            or any(v < 0 for v in fractions.values())
            or abs(sum(fractions.values()) - 1) > 1e-6
        ):
            raise ConfigError(
                "dicom_ct.split_fractions must be non-negative and sum to 1. "
                f"Received: {fractions}"
            )
        self.root = root
        self.labels_csv = labels_csv
        self.label_key = label_key
        self.label_column = label_column
        self.class_names = tuple(class_names)
        self.positive_class = positive_class
        self.window_width = window_width
        self.window_level = window_level
        self.slices = slices
        self.every = every
        self.min_lung_fraction = min_lung_fraction
        self.size = size
        self.fractions = fractions
        self.on_bad_file = on_bad_file
        self.seed = seed
        self._examples: dict[str, ArrayExamples] | None = None
        self.report: dict[str, Any] = {}

    def splits(self) -> tuple[str, ...]:
        return tuple(name for name, f in self.fractions.items() if f > 0)

    def examples(self, split: str) -> ArrayExamples:
        self.check_split(split)
        if self._examples is None:
            self._examples = self._load()
        return self._examples[split]

    # --- reading -----------------------------------------------------------

    def _files(self) -> list[str]:
        found = []
        for folder, _, names in os.walk(self.root):
            found += [
                os.path.join(folder, n) for n in names if not n.startswith(".")
            ]
        if not found:
            raise DataError(f"dicom_ct.root: no files under {self.root!r}")
        return sorted(found)

    def _scan(self) -> tuple[list[_Slice], list[tuple[str, str]], int]:
        kept: list[_Slice] = []
        bad: list[tuple[str, str]] = []
        not_axial = 0
        for path in self._files():
            ds, reason = _read(path)
            if reason is None and not is_axial(ds):
                not_axial += 1
                continue
            if reason is None:
                hu, reason = _pixels(ds)
            if reason is not None:
                bad.append((path, reason))
                continue
            position = getattr(ds, "ImagePositionPatient", None)
            z = (
                float(position[2])
                if position is not None and len(position) == 3
                else float(getattr(ds, "InstanceNumber", 0) or 0)
            )
            kept.append(
                _Slice(
                    path,
                    str(getattr(ds, "PatientID", "")),
                    str(getattr(ds, "StudyInstanceUID", "")),
                    str(getattr(ds, "SeriesInstanceUID", "")),
                    z,
                    hu.shape,
                    lung_fraction(hu),
                    self._image(hu),
                )
            )
        # A series whose slices disagree on size is inconsistent: all of it is
        # bad.
        by_series: dict[str, list[_Slice]] = {}
        for s in kept:
            by_series.setdefault(s.series, []).append(s)
        consistent = []
        for series, members in by_series.items():
            shapes = sorted({m.shape for m in members})
            if len(shapes) > 1:
                bad += [
                    (m.path, f"series {series} mixes slice sizes {shapes}")
                    for m in members
                ]
            else:
                consistent += members
        return consistent, bad, not_axial

    def _select(self, series: list[_Slice]) -> list[_Slice]:
        series = sorted(series, key=lambda s: s.position)
        if self.slices == "every":
            return series[:: self.every]
        if self.slices == "lung":
            return [s for s in series if s.lung >= self.min_lung_fraction]
        return series

    def _labels(self) -> dict[str, int] | None:
        if self.labels_csv is None:
            return None
        if not os.path.isfile(self.labels_csv):
            raise DataError(
                f"dicom_ct.labels_csv: {self.labels_csv!r} not found"
            )
        labels = {}
        with open(self.labels_csv, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {self.label_key, self.label_column} - set(
                reader.fieldnames or []
            )
            if missing:
                raise DataError(
                    f"{self.labels_csv}: needs columns {self.label_key!r} and "
                    f"{self.label_column!r}; missing {sorted(missing)} (has "
                    f"{reader.fieldnames})"
                )
            for line, row in enumerate(reader, start=2):
                name = row[self.label_column].strip()
                if name not in self.class_names:
                    raise DataError(
                        f"{self.labels_csv}, line {line}: "
                        f"label {name!r} is not one "
                        f"of class_names={list(self.class_names)}"
                    )
                labels[row[self.label_key].strip()] = self.class_names.index(
                    name
                )
        return labels

    def _image(self, hu: np.ndarray) -> np.ndarray:
        """HU -> lung-windowed uint8 at `size` x `size`."""
        import tensorflow as tf

        windowed = window(hu, self.window_width, self.window_level)
        resized = tf.image.resize(
            windowed[..., None].astype(np.float32),
            (self.size, self.size),
            antialias=True,
        ).numpy()[..., 0]
        return resized.round().clip(0, 255).astype(np.uint8)

    def _load(self) -> dict[str, ArrayExamples]:
        slices, bad, not_axial = self._scan()
        if bad and self.on_bad_file == "refuse":
            listing = "\n".join(f"  {p}: {r}" for p, r in bad)
            raise DataError(
                f"dicom_ct: {len(bad)} DICOM files cannot be used:\n{listing}\n"
                "Fix or remove them, or skip them with "
                "dicom_ct.on_bad_file = 'skip'."
            )
        if bad:
            logging.warning(
                "dicom_ct: skipping %d unusable files (first: %s: %s)",
                len(bad),
                *bad[0],
            )
        labels = self._labels()
        by_series: dict[str, list[_Slice]] = {}
        for s in slices:
            by_series.setdefault(s.series, []).append(s)
        chosen = [
            s for series in by_series.values() for s in self._select(series)
        ]
        if labels is not None:
            key = (
                (lambda s: s.patient)
                if self.label_key == "PatientID"
                else (lambda s: s.study)
            )
            unknown = sorted({key(s) for s in chosen if key(s) not in labels})
            if unknown:
                raise DataError(
                    f"dicom_ct: {len(unknown)} {self.label_key}(s) "
                    "have no row in "
                    f"{self.labels_csv}: {unknown[:5]}"
                )
        if not chosen:
            raise DataError(
                f"dicom_ct: no usable axial CT slices under {self.root!r}"
            )
        out: dict[str, ArrayExamples] = {}
        for split in self.splits():
            members = [
                s
                for s in chosen
                if _split_of(s.patient, self.fractions, self.seed) == split
            ]
            images = np.zeros((len(members), self.size, self.size, 1), np.uint8)
            for i, s in enumerate(members):
                images[i, ..., 0] = s.image
            split_labels = None
            if labels is not None:
                split_labels = np.array(
                    [
                        labels[
                            s.patient
                            if self.label_key == "PatientID"
                            else s.study
                        ]
                        for s in members
                    ],
                    np.int64,
                )
            # The patient of each slice: contrastive SSL never takes a
            # slice of the query's patient as its negative.
            sources = tuple(
                f"patient:{s.patient}" if s.patient else f"series:{s.series}"
                for s in members
            )
            out[split] = ArrayExamples(images, split_labels, sources)
        self.report = {
            "files_bad": len(bad),
            "not_axial": not_axial,
            "slices": {k: len(v) for k, v in out.items()},
            "patients": len({s.patient for s in chosen}),
        }
        logging.info("dicom_ct: %s", self.report)
        return out
