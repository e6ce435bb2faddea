"""A `toolkit train` run that several training tests read, trained once per session (per
xdist worker): `tests.configs.tiny_config` as it is, out= a session directory.

Tests only read it (a test that writes copies it first), so sharing it changes none of
their numbers: each compares against the same run it would have trained itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.configs import tiny_config
from toolkit.runs import RunConfig
from toolkit.training import FitResult, train


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    config: RunConfig  # as given to train (the result's config is the resolved one)
    out: Path  # the run directory: read it, do not write to it
    result: FitResult


@pytest.fixture(scope="session")
def tiny_run(tiny_data_dir, tmp_path_factory) -> TrainedRun:
    """`train(tiny_config(tiny_data_dir), out=...)`: the paper CNN, 2 epochs, seed 3."""
    cfg = tiny_config(tiny_data_dir)
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    return TrainedRun(cfg, out, train(cfg, out=out))
