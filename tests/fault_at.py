"""Run train.py with a fault at a chosen batch, and a record of what it trained: faults at a
known place in the run on any machine, instead of signals timed by sleeping.

    FAULT_AT=RECORD,FAULT,EPOCH,BATCH[,RANK] python tests/fault_at.py [train.py overrides...]

FAULT, at batch BATCH of epoch EPOCH (both 1-based, counted as Lightning counts them, also in
a resumed run), in the process of rank RANK (default: every process):
- SIGINT, SIGTERM or SIGKILL, sent by the process to itself once the batch is done: Ctrl-C
  and SIGTERM are acted on as a user's would be, SIGKILL ends the process like ``kill -9``;
- ``SIGINT2``: Ctrl-C twice as the batch starts;
- ``nan``: D's loss of that batch is NaN;
- ``none``: no fault.

RECORD (a JSON-lines file, appended to, so the processes of one run add up) gets a line per
trained batch, ``{"rank", "epoch", "batch", "labels"}``, and per finished epoch ``{"rank",
"epoch", "state"}``, a digest of the weights and both optimizers' states at the epoch's end.
The settings travel in the environment, so the processes a DDP run starts (which run this
script again) have the fault too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    record, fault, epoch, batch, *rank = os.environ["FAULT_AT"].split(",")
    at, only_rank = (int(epoch), int(batch)), (int(rank[0]) if rank else None)
    sys.path.insert(0, str(REPO))

    import lightning as L

    import dcgan.module
    from dcgan import loop

    def write(trainer: L.Trainer, line: dict[str, Any]) -> None:
        with open(record, "a") as f:
            f.write(json.dumps({"rank": trainer.global_rank} | line) + "\n")

    def position(trainer: L.Trainer) -> tuple[int, int]:
        # Lightning counts a batch as completed after its end hooks: hence + 1 during them.
        return trainer.current_epoch + 1, loop.batches_into_epoch(trainer) + 1

    def here(trainer: L.Trainer) -> bool:
        return position(trainer) == at and only_rank in (None, trainer.global_rank)

    nan_now = False
    real_loss = dcgan.module.discriminator_loss

    def d_loss(*args: Any) -> torch.Tensor:
        value = real_loss(*args)
        return value * float("nan") if nan_now else value

    dcgan.module.discriminator_loss = d_loss

    class FaultAt(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            nonlocal nan_now
            nan_now = fault == "nan" and here(trainer)
            if fault == "SIGINT2" and here(trainer):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

        def on_train_batch_end(
            self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, i: int
        ) -> None:
            e, b = position(trainer)
            write(trainer, {"epoch": e, "batch": b, "labels": batch[1].tolist()})
            if here(trainer) and fault in ("SIGINT", "SIGTERM", "SIGKILL"):
                os.kill(os.getpid(), signal.Signals[fault])

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            states = {f"opt{i}": o.state_dict()["state"] for i, o in enumerate(trainer.optimizers)}
            tensors = dict(module.state_dict()) | {
                f"{o}.{p}.{k}": v for o, s in states.items() for p, d in s.items() for k, v in d.items()
            }
            write(trainer, {"epoch": trainer.current_epoch + 1, "state": digest(tensors)})

    # Every Trainer train.py builds gets the callback, first: a signal lands before the other
    # callbacks' end-of-batch work, as one arriving during the batch would.
    init = L.Trainer.__init__

    def trainer_with_fault(self: L.Trainer, *args: Any, callbacks: list[L.Callback] | None = None, **kw: Any) -> None:
        init(self, *args, callbacks=[FaultAt(), *(callbacks or [])], **kw)

    L.Trainer.__init__ = trainer_with_fault  # type: ignore[method-assign]
    Path(record).parent.mkdir(parents=True, exist_ok=True)
    # train.py run as __main__ (Hydra finds conf/ by its file), with sys.argv left this
    # script's (runpy would set it to train.py's): Lightning starts a DDP run's other processes
    # with sys.argv, so they get the fault too.
    spec = importlib.util.spec_from_file_location("__main__", REPO / "train.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


if __name__ == "__main__":
    main()
