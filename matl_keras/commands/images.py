"""The image files named by `--images` (files and folders), checked, and
the evaluation batches the commands read from them."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.errors import ConfigError
from matl_keras.errors import DataError


def image_files(paths: Sequence[str]) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(decode.IMAGE_EXTENSIONS)
            )
            if not found:
                raise ConfigError(
                    f"--images: no image files in folder {path!r}"
                )
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ConfigError(f"--images: {path!r} does not exist")
    bad = decode.find_bad_images(files)
    if bad:
        raise DataError(
            "--images: cannot read " + "; ".join(str(b) for b in bad)
        )
    return files


def load_batch(
    files: Sequence[str], image_size: int, crop_fraction: float
) -> np.ndarray:
    """`files` as one float32 batch, decoded as the input pipeline reads
    files (TIFF and WebP included) and transformed as for evaluation."""
    return np.stack(
        [
            pipeline.eval_transform(
                decode.decode_file_image(tf.io.read_file(f)),
                image_size,
                crop_fraction,
            ).numpy()
            for f in files
        ]
    )
