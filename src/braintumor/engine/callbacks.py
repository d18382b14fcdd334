"""Training callbacks: what happens at each epoch end (history, best weights, checkpoint, early stopping)."""

from __future__ import annotations

import csv
from pathlib import Path

import keras

from braintumor.core import rundir

CHECKPOINTS = "checkpoints"  # best.weights.h5, last.keras, state.json; removed when the run completes


class EpochState(keras.callbacks.Callback):
    """Per epoch: history row, best weights (by validation loss), last checkpoint, early stopping.

    The state file is written last, so after a kill at any point it names a complete epoch.
    """

    def __init__(self, run_dir: Path, patience: int, state: dict, resumable: bool = True):
        super().__init__()
        self.run_dir, self.patience, self.state = run_dir, patience, state
        self.resumable = resumable  # False: a head on cached features, which resume retrains from the start
        self.folder = run_dir / CHECKPOINTS

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in sorted(logs.items())}}
        _append_history(self.run_dir / "history.csv", row)
        val_loss = row.get("val_loss", row["loss"])
        if self.state["best_val_loss"] is None or val_loss < self.state["best_val_loss"]:
            self.state.update(best_val_loss=val_loss, best_epoch=epoch + 1, wait=0)
            self.model.save_weights(self.folder / "best.weights.h5")
        else:
            self.state["wait"] += 1
        if self.resumable:
            self.model.save(self.folder / "last.keras")
        self.state["epoch"] = epoch + 1
        rundir.write_json(self.folder / "state.json", self.state)
        if self.patience and self.state["wait"] >= self.patience:
            print(f"early stopping: validation loss has not improved for {self.patience} epochs")
            self.model.stop_training = True


def _append_history(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_history(path: Path, epochs: int) -> None:
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1 + epochs]))

