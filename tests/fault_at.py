"""Run train.py with a fault at a chosen batch, and a record of what it trained: faults at a
known place in the run on any machine, instead of signals timed by sleeping.

    python -m tests.fault_at RECORD FAULT EPOCH BATCH [train.py overrides...]

FAULT, at batch BATCH of epoch EPOCH (both 1-based, counted as Lightning counts them, also in
a resumed run):
- SIGINT, SIGTERM or SIGKILL, sent by the process to itself once the batch is done: Ctrl-C
  and SIGTERM are acted on as a user's would be, SIGKILL ends the process like ``kill -9``;
- ``SIGINT2``: Ctrl-C twice as the batch starts;
- ``nan``: D's loss of that batch is NaN;
- ``none``: no fault.

RECORD (a JSON-lines file, appended to, so the processes of one run add up) gets a line per
trained batch, ``{"epoch", "batch", "labels"}``, and per finished epoch ``{"epoch", "state"}``,
a digest of the weights and both optimizers' states at the epoch's end.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from tests.helpers import REPO


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    record, fault, epoch, batch, *overrides = sys.argv[1:]
    at = (int(epoch), int(batch))

    import lightning as L

    import dcgan.module
    from dcgan import loop

    def write(line: dict[str, Any]) -> None:
        with open(record, "a") as f:
            f.write(json.dumps(line) + "\n")

    def position(trainer: L.Trainer) -> tuple[int, int]:
        # Lightning counts a batch as completed after its end hooks: hence + 1 during them.
        return trainer.current_epoch + 1, loop.batches_into_epoch(trainer) + 1

    nan_now = False
    real_loss = dcgan.module.discriminator_loss

    def d_loss(*args: Any) -> torch.Tensor:
        value = real_loss(*args)
        return value * float("nan") if nan_now else value

    dcgan.module.discriminator_loss = d_loss

    class FaultAt(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            nonlocal nan_now
            nan_now = fault == "nan" and position(trainer) == at
            if fault == "SIGINT2" and position(trainer) == at:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

        def on_train_batch_end(
            self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, i: int
        ) -> None:
            e, b = position(trainer)
            write({"epoch": e, "batch": b, "labels": batch[1].tolist()})
            if (e, b) == at and fault in ("SIGINT", "SIGTERM", "SIGKILL"):
                os.kill(os.getpid(), signal.Signals[fault])

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            states = {f"opt{i}": o.state_dict()["state"] for i, o in enumerate(trainer.optimizers)}
            tensors = dict(module.state_dict()) | {
                f"{o}.{p}.{k}": v for o, s in states.items() for p, d in s.items() for k, v in d.items()
            }
            write({"epoch": trainer.current_epoch + 1, "state": digest(tensors)})

    # Every Trainer train.py builds gets the callback, first: a signal lands before the other
    # callbacks' end-of-batch work, as one arriving during the batch would.
    init = L.Trainer.__init__

    def trainer_with_fault(self: L.Trainer, *args: Any, callbacks: list[L.Callback] | None = None, **kw: Any) -> None:
        init(self, *args, callbacks=[FaultAt(), *(callbacks or [])], **kw)

    L.Trainer.__init__ = trainer_with_fault  # type: ignore[method-assign]
    Path(record).parent.mkdir(parents=True, exist_ok=True)
    sys.argv = [str(REPO / "train.py"), *overrides]
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")


if __name__ == "__main__":
    main()
