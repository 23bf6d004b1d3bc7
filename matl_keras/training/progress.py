"""A progress line every 30 s when the output is not a terminal.

Keras' progress bar is for terminals; redirected to a file (a batch job, a
`nohup`, a CI log) it prints one line per epoch (`verbose=2`), so a long
first epoch looks like a hung job. `Progress` fills the silence: at most
`every` seconds after the last line, it prints the epoch, the step, the
training throughput and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

import keras


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress(keras.callbacks.Callback):
    """Prints `epoch e/E step s/S, N img/s, ETA ...` every `every` seconds.

    The ETA counts training steps at this epoch's rate: the epoch's rest,
    then the stage's (validation and kNN passes are not in it).

    Args:
        batch_size: int. Global batch size (images per step).
        every: float. Longest silence, in seconds.
        stream: text stream or None. Where to print (default: stdout).
        enabled: bool or None. Default: only when `stream` is not a
            terminal (on a terminal Keras' bar shows the same).
        clock: callable. Seconds, monotonic (tests pass a fake).

    Example:

    ```python
    model.fit(data, epochs=5, callbacks=[Progress(batch_size=32)], verbose=2)
    ```
    """

    def __init__(
        self,
        batch_size: int,
        every: float = 30.0,
        stream: IO[str] | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(
                "`batch_size` must be positive. "
                f"Received: batch_size={batch_size}"
            )
        self.batch_size = batch_size
        self.every = every
        self.stream = stream
        self.enabled = enabled
        self.clock = clock
        self._epoch = 0
        self._epoch_start = 0.0
        self._last = 0.0

    def _out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stdout

    def on_train_begin(self, logs=None):
        if self.enabled is None:
            isatty = getattr(self._out(), "isatty", None)
            self.enabled = not (isatty is not None and isatty())
        self._last = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = self._last = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        # Keras prints its epoch line now.
        self._last = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if not self.enabled:
            return
        now = self.clock()
        if now - self._last < self.every:
            return
        self._last = now
        self._out().write(self.line(batch + 1, now - self._epoch_start) + "\n")
        self._out().flush()

    def line(self, done: int, elapsed: float) -> str:
        """The progress line after `done` steps of this epoch."""
        epochs = self.params.get("epochs")
        steps = self.params.get("steps")
        rate = done * self.batch_size / max(elapsed, 1e-9)
        text = f"epoch {self._epoch + 1}/{epochs} step {done}"
        if not steps:
            return f"{text}, {rate:.1f} img/s"
        per_step = elapsed / done
        epoch_left = (steps - done) * per_step
        stage_left = epoch_left + (epochs - self._epoch - 1) * steps * per_step
        return (
            f"{text}/{steps}, {rate:.1f} img/s, ETA {_duration(epoch_left)} "
            f"epoch, {_duration(stage_left)} stage"
        )
