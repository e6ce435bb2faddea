"""What the training tests start from: the small private `RunConfig`, a small model for
tests about records, and a run directory as a kill during epoch 2 leaves it."""

from __future__ import annotations

import shutil
from pathlib import Path

from toolkit.runs import RunConfig, rundir

# A run whose test is about records, not the paper CNN: a factory by import path (784 ->
# 8 -> 10, `tests.zoo.TinyMlp`) on the same 28 x 28 images, a fraction of its compile time.
TINY_MODEL = dict(model="tests.zoo:tiny_mlp", activation=None)


def tiny_config(data_dir, **overrides) -> RunConfig:
    """Fashion-MNIST-shaped, 2 epochs of B=60, sigma 0.8, C 1; `overrides` replace fields."""
    base = dict(
        dataset="fashion-mnist", data_dir=str(data_dir), epochs=2, batch_size=60, lr=0.5,
        clip_norm=1.0, noise_multiplier=0.8, seed=3, max_physical_batch=64,
    )  # fmt: skip
    return RunConfig(**{**base, **overrides})


def cut_after_epoch_1(run: Path, to: Path) -> Path:
    """`to`: the directory `run` had when a kill stopped it during epoch 2.

    `run` kept every checkpoint (`keep_checkpoints=1`), so `checkpoint-epoch1.npz` holds
    the bytes its checkpoint.npz had after epoch 1. `rundir.epoch_writer` writes the kept
    checkpoint, then checkpoint.npz, then epochs.jsonl, and nothing else is written before
    the run ends: config.json, those two checkpoints and epochs.jsonl's first line are
    what a kill during epoch 2 leaves (the real kill: tests/toolkit/training/test_train.py).
    """
    to.mkdir()
    shutil.copy(run / rundir.CONFIG, to / rundir.CONFIG)
    for name in (rundir.kept_checkpoint(1), rundir.CHECKPOINT):
        shutil.copy(run / rundir.kept_checkpoint(1), to / name)
    first = (run / rundir.EPOCHS).read_text().splitlines(keepends=True)[0]
    (to / rundir.EPOCHS).write_text(first)
    return to
