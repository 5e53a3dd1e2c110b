"""Where training is, read from Lightning's loops and checkpoints.

The one module that reads Lightning's internals (private attributes, loop progress counters, the
checkpoint's ``loops`` entry): a Lightning upgrade that moves them breaks this file only.
"""

from __future__ import annotations

from typing import Any

import lightning as L


def batch_index(trainer: L.Trainer) -> int:
    """0-based index of the current (or, after it, the last) batch of the whole run: batches
    across epochs, restored on resume. (``global_step`` counts both optimizers' steps.)

    Counted from the batches whose training step started: a batch that Lightning had fetched
    and readied when Ctrl-C stopped the run (``total_batch_idx`` counts it) was not trained,
    and a resumed run trains it under the index the uninterrupted run gave it."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.started) - 1


def batches_trained(trainer: L.Trainer) -> int:
    """Batches trained so far in the whole run."""
    return batch_index(trainer) + 1


def batches_into_epoch(trainer: L.Trainer) -> int:
    """Batches of the current epoch completed; ``trainer.num_training_batches`` once the epoch's
    last batch is done, until the next epoch starts (e.g. in end-of-epoch work)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)


def epochs_finished(trainer: L.Trainer) -> int:
    """Epochs whose end-of-epoch work has run."""
    return int(trainer.fit_loop.epoch_progress.current.processed)


def logger_writes_now(trainer: L.Trainer) -> bool:
    """Whether the logger writes this batch's step metrics (every ``log_every_n_steps``)."""
    return bool(trainer._logger_connector.should_update_logs)


def epochs_trained(ckpt: dict[str, Any]) -> int:
    """Epochs whose training finished when ``ckpt`` was written. (``ckpt["epoch"]`` lags by one
    in checkpoints written from an epoch-end hook, like ``best.ckpt``.)"""
    return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


def data_position(ckpt: dict[str, Any]) -> tuple[int, int] | None:
    """(epoch, batches of it trained), 0-based epoch, as the in-memory data loader saved it in
    ``ckpt``: where a resumed run picks up the data order. None: streamed data, or a checkpoint
    of an older version."""
    states = ckpt["loops"]["fit_loop"]["state_dict"].get("combined_loader") or [{}]
    state = states[0]
    return (int(state["epoch"]), int(state["batches"])) if "epoch" in state else None
