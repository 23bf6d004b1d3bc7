"""Leakage audit of a dataset's splits: `matl-keras audit`.

    matl-keras audit --dataset=covid_ct --gin_param='covid_ct.root = "..."'
        [--splits=train,val] [--on_leak=warn|refuse] [--output=FILE]

Finds, within and across splits:

- exact duplicates: files with the same bytes (SHA-256), or images with the
  same pixels;
- near duplicates: images whose difference hash (dHash, `HASH_SIDE` x
  `HASH_SIDE` = 256 bits: the signs of horizontal gradients of the
  grayscale image shrunk to `HASH_SIDE` x `HASH_SIDE + 1`) differ in at
  most `NEAR_THRESHOLD` bits. A re-encoded or rescaled copy of a slice
  stays within it, other slices mostly do not; a cropped copy is not
  caught (see `NEAR_THRESHOLD`). Pairs are listed with their distance, so
  a reader can look;
- patients in more than one split, where the dataset has patient ids:
  COVIDx-style lists (`patient_id filename label ...` per line), a CSV with
  a patient column beside an image-name column (COVID19-CT's
  `NonCOVID-CT-MetaInfo.csv`), or the same in an `.xlsx` sheet
  (`COVID-CT-MetaInfo.xlsx`), found under the dataset's `root`.

A finding across splits is a leak: with `on_leak="warn"` (default) it is
printed and written to the report; `on_leak="refuse"` makes it an error.
Duplicates within one split are reported but are not leaks. The pairwise
comparison is O(n^2) in 256-bit words (about a second for 10k images).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import zipfile
from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree

import numpy as np

from matl_keras.errors import DataError

HASH_SIDE = 16
# Bits of 256 that may differ for a near duplicate. Measured on the 543
# COVID19-CT train/val slices: a JPEG re-encode (quality 75) moves a hash
# by 0-13 bits (median 2), a 90% resize by 0-14 (median 4); the nearest
# other slice of the set is a median 62 bits away (5th percentile 31).
# The 9 pairs within 24 bits are all consecutive file numbers of one scan
# that look the same by eye (e.g. NonCOVID 116/118 at 8 bits). A 5% crop
# moves the hash by 25-87 bits: cropped copies are NOT caught.
NEAR_THRESHOLD = 24
ON_LEAK = ("warn", "refuse")


def dhash(image: Any, side: int = HASH_SIDE) -> np.ndarray:
    """Difference hash of a PIL image or an `(h, w[, c])` uint8 array:
    `side * side` bools, `True` where a pixel is brighter than its right
    neighbour in the grayscale image resized (area average) to
    `(side, side + 1)`."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = (
            image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        )
        image = Image.fromarray(np.asarray(array, np.uint8))
    gray = np.asarray(
        image.convert("L").resize((side + 1, side), Image.Resampling.BOX),
        np.float32,
    )
    return (gray[:, 1:] > gray[:, :-1]).ravel()


def hamming_pairs(
    hashes: np.ndarray, threshold: int
) -> list[tuple[int, int, int]]:
    """`(i, j, distance)` for every pair `i < j` of rows of the bool matrix
    `hashes` that differ in at most `threshold` positions."""
    bits = np.asarray(hashes, np.float32)
    ones = bits.sum(axis=1)
    pairs = []
    for start in range(0, len(bits), 1024):
        block = bits[start : start + 1024]
        # |a xor b| = |a| + |b| - 2 a.b
        distance = (
            ones[start : start + 1024, None]
            + ones[None, :]
            - 2.0 * block @ bits.T
        )
        rows, cols = np.nonzero(np.rint(distance) <= threshold)
        for r, c in zip(rows, cols):
            i = start + int(r)
            if i < c:
                pairs.append((i, int(c), int(round(float(distance[r, c])))))
    return pairs


def _xlsx_rows(path: str) -> list[list[str]]:
    """The first sheet of an .xlsx file as rows of strings (no openpyxl)."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as z:
        strings = []
        if "xl/sharedStrings.xml" in z.namelist():
            root = ElementTree.fromstring(z.read("xl/sharedStrings.xml"))
            strings = [
                "".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t"))
                for si in root.findall("m:si", ns)
            ]
        sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
    rows = []
    for row in sheet.iter(f"{{{ns['m']}}}row"):
        cells: dict[int, str] = {}
        for cell in row.findall("m:c", ns):
            column = re.match(r"[A-Z]+", cell.get("r", "A")).group(0)
            index = 0
            for ch in column:
                index = index * 26 + ord(ch) - 64
            value = cell.find("m:v", ns)
            inline = cell.find("m:is/m:t", ns)
            text = (
                inline.text
                if inline is not None
                else value.text
                if value is not None
                else ""
            ) or ""
            if cell.get("t") == "s" and text:
                text = strings[int(text)]
            cells[index - 1] = text
        rows.append(
            [cells.get(i, "") for i in range(max(cells, default=-1) + 1)]
        )
    return rows


def _table_ids(rows: list[list[str]]) -> dict[str, str]:
    """`{image name: patient id}` from a table whose header names an image
    column ("image", "file") and a patient column ("patient")."""
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    patient = next((i for i, h in enumerate(header) if "patient" in h), None)
    image = next(
        (
            i
            for i, h in enumerate(header)
            if ("image" in h or "file" in h) and i != patient
        ),
        None,
    )
    if patient is None or image is None:
        return {}
    return {
        row[image].strip(): row[patient].strip()
        for row in rows[1:]
        if len(row) > max(patient, image)
        and row[image].strip()
        and row[patient].strip()
    }


def patient_ids(root: str | None) -> tuple[dict[str, str], list[str]]:
    """`({file name: patient id}, [files read])` from the patient metadata
    under `root` (top level only): COVIDx lists, CSV and XLSX tables."""
    found: dict[str, str] = {}
    sources = []
    if not root or not os.path.isdir(root):
        return found, sources
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        ids: dict[str, str] = {}
        if name.endswith(".txt") and os.path.isfile(path):
            with open(path, errors="replace") as f:
                lines = [line.split() for line in f if line.strip()]
            # COVIDx: "patient_id filename label [source]".
            if lines and all(len(p) >= 3 and "." in p[1] for p in lines):
                ids = {p[1]: p[0] for p in lines}
        elif name.endswith(".csv"):
            with open(path, newline="", errors="replace") as f:
                ids = _table_ids(list(csv.reader(f)))
        elif name.endswith(".xlsx"):
            try:
                ids = _table_ids(_xlsx_rows(path))
            except (KeyError, zipfile.BadZipFile, ElementTree.ParseError):
                ids = {}
        if ids:
            found.update(ids)
            sources.append(path)
    return found, sources


def _load(examples: Any, index: int) -> tuple[Any, str]:
    """(PIL image or array, SHA-256 of the file or of the pixels)."""
    from PIL import Image

    if hasattr(examples, "paths"):
        with open(examples.paths[index], "rb") as f:
            data = f.read()
        return Image.open(io.BytesIO(data)), hashlib.sha256(data).hexdigest()
    pixels = np.ascontiguousarray(examples.images[index])
    return pixels, hashlib.sha256(pixels.tobytes()).hexdigest()


def audit(
    dataset: Any,
    splits: Sequence[str] | None = None,
    threshold: int = NEAR_THRESHOLD,
    on_leak: str = "warn",
    patients: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Audits `dataset`'s `splits` (default: all); returns the report.

    Args:
        dataset: a Dataset plugin instance.
        splits: sequence of str or None. Splits to compare.
        threshold: int. Near-duplicate dHash distance (bits of 256).
        on_leak: str. `"warn"` or `"refuse"` (raise `DataError` when a
            finding crosses splits).
        patients: dict or None. `{file name: patient id}`; default: read
            from the dataset's `root` (`patient_ids`).
    """
    if on_leak not in ON_LEAK:
        raise DataError(
            f"`on_leak` must be one of {ON_LEAK}. Received: on_leak={on_leak!r}"
        )
    splits = list(splits or dataset.splits())
    for split in splits:
        dataset.check_split(split)
    sources: list[str] = []
    if patients is None:
        patients, sources = patient_ids(getattr(dataset, "root", None))
    items, hashes, digests = [], [], []
    for split in splits:
        examples = dataset.examples(split)
        for index in range(len(examples)):
            image, digest = _load(examples, index)
            path = examples.paths[index] if hasattr(examples, "paths") else None
            label = (
                None if examples.labels is None else int(examples.labels[index])
            )
            items.append(
                {
                    "split": split,
                    "index": index,
                    "path": path,
                    "label": None
                    if label is None
                    else dataset.class_names[label],
                }
            )
            hashes.append(dhash(image))
            digests.append(digest)

    def where(i: int) -> dict[str, Any]:
        item = items[i]
        return {
            k: item[k]
            for k in ("split", "index", "path", "label")
            if item[k] is not None or k == "path"
        }

    by_digest: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(i)
    exact = [group for group in by_digest.values() if len(group) > 1]
    exact_pairs = {(a, b) for g in exact for a in g for b in g if a < b}
    near = (
        [
            (i, j, d)
            for i, j, d in hamming_pairs(np.stack(hashes), threshold)
            if (i, j) not in exact_pairs
        ]
        if items
        else []
    )

    def crosses(indices: Sequence[int]) -> bool:
        return len({items[i]["split"] for i in indices}) > 1

    patient_splits: dict[str, dict[str, list[str]]] = {}
    matched = 0
    for item in items:
        pid = (
            patients.get(os.path.basename(item["path"] or ""))
            if patients
            else None
        )
        if pid is not None:
            matched += 1
            files = patient_splits.setdefault(pid, {}).setdefault(
                item["split"], []
            )
            files.append(os.path.basename(item["path"]))
    shared_patients = {
        pid: found
        for pid, found in sorted(patient_splits.items())
        if len(found) > 1
    }
    report = {
        "splits": {
            s: sum(1 for it in items if it["split"] == s) for s in splits
        },
        "near_threshold_bits": threshold,
        "hash": f"dHash {HASH_SIDE}x{HASH_SIDE} ({HASH_SIDE * HASH_SIDE} bits)",
        "exact_duplicates": [
            {"across_splits": crosses(g), "images": [where(i) for i in g]}
            for g in exact
        ],
        "near_duplicates": [
            {
                "across_splits": crosses((i, j)),
                "distance": d,
                "same_label": items[i]["label"] == items[j]["label"],
                "images": [where(i), where(j)],
            }
            for i, j, d in sorted(near, key=lambda p: p[2])
        ],
        "patients": {
            "sources": sources,
            "images_with_id": matched,
            "in_several_splits": shared_patients,
        },
    }
    report["summary"] = {
        "exact_groups_across_splits": sum(
            e["across_splits"] for e in report["exact_duplicates"]
        ),
        "exact_groups_within_a_split": sum(
            not e["across_splits"] for e in report["exact_duplicates"]
        ),
        "near_pairs_across_splits": sum(
            n["across_splits"] for n in report["near_duplicates"]
        ),
        "near_pairs_within_a_split": sum(
            not n["across_splits"] for n in report["near_duplicates"]
        ),
        "patients_in_several_splits": len(shared_patients),
    }
    leaks = (
        report["summary"]["exact_groups_across_splits"]
        + report["summary"]["near_pairs_across_splits"]
        + report["summary"]["patients_in_several_splits"]
    )
    report["leak"] = bool(leaks)
    report["on_leak"] = on_leak
    return report


def describe(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    s = report["summary"]
    p = report["patients"]
    lines = [
        "images: " + ", ".join(f"{k} {v}" for k, v in report["splits"].items()),
        f"exact duplicates: {s['exact_groups_across_splits']} group(s) "
        "across splits, "
        f"{s['exact_groups_within_a_split']} within a split",
        f"near duplicates ({report['hash']}, "
        f"<= {report['near_threshold_bits']} bits): "
        f"{s['near_pairs_across_splits']} pair(s) across splits, "
        f"{s['near_pairs_within_a_split']} within a split",
        (
            f"patients: {p['images_with_id']} image(s) with an id "
            "("
            f"{', '.join(os.path.basename(x) for x in p['sources']) or 'given'}"
            "); "
            f"{s['patients_in_several_splits']} patient(s) in several splits"
            if p["images_with_id"]
            else "patients: no patient ids found"
        ),
    ]
    for pid, found in list(p["in_several_splits"].items())[:5]:
        lines.append(
            f"  patient {pid}: "
            + "; ".join(
                f"{split} {len(files)} ({', '.join(files[:2])}"
                f"{', ...' if len(files) > 2 else ''})"
                for split, files in found.items()
            )
        )
    for pair in [n for n in report["near_duplicates"] if n["across_splits"]][
        :5
    ]:
        a, b = pair["images"]
        lines.append(
            f"  near ({pair['distance']} bits): {a['split']} "
            f"{os.path.basename(a['path'] or str(a['index']))} ~ {b['split']} "
            f"{os.path.basename(b['path'] or str(b['index']))}"
        )
    lines.append(
        "LEAK: findings across splits"
        if report["leak"]
        else "no finding across splits"
    )
    return "\n".join(lines)


def run(
    dataset: Any,
    splits: Sequence[str] | None,
    on_leak: str,
    output: str | None,
    threshold: int = NEAR_THRESHOLD,
) -> dict[str, Any]:
    """`matl-keras audit`: audits, prints, writes `output` (JSON), and
    raises `DataError` for a leak when `on_leak="refuse"`."""
    import json

    report = audit(dataset, splits, threshold, on_leak)
    print(describe(report))
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {output}")
    if report["leak"] and on_leak == "refuse":
        s = report["summary"]
        raise DataError(
            f"leakage audit of {getattr(dataset, 'name', dataset)}: "
            f"{s['exact_groups_across_splits']} exact duplicate group(s), "
            f"{s['near_pairs_across_splits']} near-duplicate pair(s) and "
            f"{s['patients_in_several_splits']} patient(s) across splits "
            f"(on_leak='refuse'; details in {output or 'the report above'})"
        )
    return report
