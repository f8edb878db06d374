"""A callback that sends a real signal to its own process at a chosen step and hook, for tests of
pre-emption at exact points (`+callbacks.signal._target_=signal_helpers.SendSignal ...`)."""

import os
import signal

import lightning as L


class SendSignal(L.Callback):
    def __init__(self, step: int, hook: str = "on_train_batch_end", name: str = "SIGTERM") -> None:
        self.step, self.hook, self.sig = step, hook, getattr(signal, name)
        setattr(self, hook, self._maybe_send)

    def _maybe_send(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), self.sig)
