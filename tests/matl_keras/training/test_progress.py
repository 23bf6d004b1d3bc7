"""The progress line for logs that are not a terminal, on a fake clock."""

import io

import keras
import numpy as np

from matl_keras.training.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _drive(progress, clock, epochs, steps, seconds_per_step):
    progress.set_params({"epochs": epochs, "steps": steps, "verbose": 2})
    progress.on_train_begin()
    for epoch in range(epochs):
        progress.on_epoch_begin(epoch)
        for batch in range(steps):
            clock.now += seconds_per_step
            progress.on_train_batch_end(batch)
        clock.now += 50  # validation: Keras prints the epoch line after it
        progress.on_epoch_end(epoch)


def test_a_line_at_least_every_30_s_with_step_rate_and_eta():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(batch_size=32, stream=out, clock=clock)
    _drive(progress, clock, epochs=2, steps=10, seconds_per_step=8.0)
    lines = out.getvalue().splitlines()
    # 80 s of steps per epoch: lines after steps 4 and 8 (32 s, 64 s);
    # validation time does not produce lines, and each epoch restarts.
    assert lines == [
        "epoch 1/2 step 4/10, 4.0 img/s, ETA 0:00:48 epoch, 0:02:08 stage",
        "epoch 1/2 step 8/10, 4.0 img/s, ETA 0:00:16 epoch, 0:01:36 stage",
        "epoch 2/2 step 4/10, 4.0 img/s, ETA 0:00:48 epoch, 0:00:48 stage",
        "epoch 2/2 step 8/10, 4.0 img/s, ETA 0:00:16 epoch, 0:00:16 stage",
    ]


def test_fast_steps_print_nothing_and_unknown_steps_print_no_eta():
    clock, out = FakeClock(), io.StringIO()
    _drive(Progress(8, stream=out, clock=clock), clock, 3, 100, 0.1)
    assert out.getvalue() == ""
    progress = Progress(8, stream=out, clock=clock)
    progress.set_params({"epochs": 1, "steps": None})
    progress.on_train_begin()
    progress.on_epoch_begin(0)
    clock.now += 31
    progress.on_train_batch_end(2)
    assert out.getvalue() == "epoch 1/1 step 3, 0.8 img/s\n"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_silent_on_a_terminal_unless_enabled():
    clock = FakeClock()
    out = Terminal()
    _drive(Progress(8, stream=out, clock=clock), clock, 1, 10, 8.0)
    assert out.getvalue() == ""
    _drive(
        Progress(8, stream=out, clock=clock, enabled=True), clock, 1, 10, 8.0
    )
    assert out.getvalue().count("\n") == 2


def test_inside_fit():
    clock, out = FakeClock(), io.StringIO()

    class Tick(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            clock.now += 20.0

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x = np.zeros((12, 3), np.float32)
    model.fit(
        x,
        np.zeros((12, 2), np.float32),
        batch_size=4,
        epochs=1,
        verbose=0,
        callbacks=[Tick(), Progress(4, stream=out, clock=clock)],
    )
    assert out.getvalue() == (
        "epoch 1/1 step 2/3, 0.2 img/s, ETA 0:00:20 epoch, 0:00:20 stage\n"
    )
