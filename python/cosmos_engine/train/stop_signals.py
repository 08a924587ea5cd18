"""Stopping a run on request without losing its work: SIGTERM (SLURM, Kubernetes, torchrun), SIGINT (Ctrl-C)
and SIGUSR1 (`sbatch --signal=USR1@60`) ask the loop to stop; it finishes the step it is in, saves a
checkpoint and exits with 128 + the signal number. A second Ctrl-C aborts at once (the last checkpoint
is intact), without a traceback.

Under torchrun the ranks agree on the step to stop at (`requested()` is a collective), so every rank saves
the same checkpoint even when the signal reaches them at different moments.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int) -> None:
    """The init of every DataLoader worker of a run: the stop signals (Ctrl-C and SIGTERM reach the whole
    process group) are the main process's to act on; it finishes its step and checkpoint with the workers
    alive, then shuts them down. Forked workers would otherwise run the main process's handler too."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class RunStopped(Exception):
    """The run stopped on a signal after saving its work; the CLI prints the message and exits with `exit_code`."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequests:
    """A context that turns the stop signals into a request the training loop polls."""

    def __init__(self, device: torch.device):
        self.device = device
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # os.write, not print: the signal may land while the progress bar or a log line is writing to stderr,
        # and a buffered write re-entered from a handler raises.
        if self.signum and signum == signal.SIGINT:
            os.write(2, b"cosmos-engine run: second Ctrl-C: aborting now; the last saved checkpoint is intact\n")
            os._exit(128 + signum)
        if not self.signum:
            self.signum = signum
            again = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
            os.write(2, f"cosmos-engine run: {signal.Signals(signum).name} received: stopping at the end of the "
                        f"current step with a checkpoint{again}\n".encode())

    def requested(self) -> int:
        """The signal that asked to stop (0: none); under torchrun any rank's request counts for all."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.signum
        flag = torch.tensor([self.signum], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
