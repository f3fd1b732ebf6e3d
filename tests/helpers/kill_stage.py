"""Run ``tessera ARGV...`` in this process; with ``TESSERA_TEST_KILL_AFTER=N`` SIGKILL itself
right after update N (before that step's checkpoint is written), as a crash or ``kill -9``
would: the integration tests then re-run the same command and expect an exact resume."""

from __future__ import annotations

import os
import signal
import sys

from tessera.cli.main import main
from tessera.training.trainer import Trainer

KILL_AFTER = int(os.environ.get("TESSERA_TEST_KILL_AFTER", "0"))

if KILL_AFTER:
    _step = Trainer._train_step

    def _killing_step(self: Trainer):  # type: ignore[no-untyped-def]
        out = _step(self)
        if self.step + 1 == KILL_AFTER:  # self.step: updates done before this one
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    Trainer._train_step = _killing_step  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
