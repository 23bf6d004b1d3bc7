"""The job a gin file runs when `matl-keras` gets no command."""

from __future__ import annotations

from collections.abc import Callable

import gin
from matl_keras.errors import ConfigError


def job(fn: Callable[..., object] | None = None) -> Callable[..., object]:
    """Returns the configured job function (gin: `job.fn = @train`).

    The CLI calls it with `workdir=`.
    """
    if fn is None:
        raise ConfigError(
            "no job is configured: a --gin_file must bind `job.fn` "
            "(e.g. `job.fn = @train`, as gin/finetune.gin does)"
        )
    return fn


# Configurable as `job` in gin, registered here on the definition; Python
# callers get the plain function (its errors without gin's call notes).
gin.external_configurable(job, name="job")
