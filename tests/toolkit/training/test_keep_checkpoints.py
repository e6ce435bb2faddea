"""`toolkit train --keep-checkpoints K`: kept checkpoints, unchanged numbers, resume, bad K."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

import toolkit
from tests.configs import TINY_MODEL, tiny_config
from toolkit.cli import app
from toolkit.runs import RunConfig, rundir
from toolkit.training import resume, train

runner = CliRunner()


def _cfg(data_dir, **kw) -> RunConfig:
    return tiny_config(data_dir, **kw)


def _arrays(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "meta"}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _strip_times(history):
    return [dataclasses.replace(r, epoch_time_s=0.0, compile_time_s=None) for r in history]


@pytest.mark.slow
def test_keep_checkpoints_change_no_number_and_survive_resume(
    tiny_data_dir, tiny_run, tmp_path, monkeypatch
):
    plain = tiny_run.result.history  # train(tiny_config(...)): the same run, no kept files
    # Run "kept" is killed right after epoch 1 (its epochs.jsonl written), then resumed.
    real_write = rundir.write_epochs

    def crash_after_first(out, history):
        real_write(out, history)
        if len(history) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "write_epochs", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_data_dir, keep_checkpoints=1), out=tmp_path / "kept")
    monkeypatch.setattr(rundir, "write_epochs", real_write)
    assert list(rundir.kept_checkpoints(tmp_path / "kept")) == [1]
    kept = resume(tmp_path / "kept").history

    assert _strip_times(kept) == _strip_times(plain)
    final = _arrays(tiny_run.out / rundir.CHECKPOINT)
    assert _same(_arrays(tmp_path / "kept" / rundir.CHECKPOINT), final)
    files = rundir.kept_checkpoints(tmp_path / "kept")
    assert list(files) == [1, 2]
    assert _same(_arrays(files[2]), final)  # the last kept one is the final state
    assert not _same(_arrays(files[1]), final)
    # load_run(epoch=E): the parameters and history of epoch E, eps spent by then.
    early = toolkit.load_run(tmp_path / "kept", epoch=1)
    assert len(early.history) == 1 and early.epsilon == {
        k: v for k, v in early.history[0].epsilon.items()
    }
    assert early.epsilon["rdp"] < toolkit.load_run(tmp_path / "kept").epsilon["rdp"]
    kernel = np.asarray(early.model.conv1.kernel[...])
    assert np.array_equal(kernel, _arrays(files[1])["tree/params/conv1/kernel/value"])


def test_keep_every_k_keeps_multiples_of_k_only(tiny_data_dir, tmp_path):
    train(_cfg(tiny_data_dir, keep_checkpoints=2, **TINY_MODEL), out=tmp_path / "run")
    assert list(rundir.kept_checkpoints(tmp_path / "run")) == [2]


@pytest.mark.parametrize("k", ["-1", "3"])
def test_bad_keep_checkpoints_is_one_line_exit_2_nothing_written(tiny_data_dir, tmp_path, k):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--dataset", "fashion-mnist", "--data-dir", str(tiny_data_dir), "--epochs", "2",
        "--batch-size", "60", "--noise-multiplier", "1", "--keep-checkpoints", k,
        "--out", str(out), "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert f"keep_checkpoints={k}" in lines[0] and "[0, epochs=2]" in lines[0]
    assert not out.exists()
