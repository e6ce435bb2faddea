"""The optional TensorBoard sink: the event file read back holds each epoch's record values."""

from __future__ import annotations

import builtins
import struct

import pytest
from typer.testing import CliRunner

from tests.run_fakes import fake_run
from toolkit.cli import app
from toolkit.runs import rundir
from toolkit.training import _tracking as tracking

runner = CliRunner()


def _values(logdir):
    """(step, Summary.Value) of TFRecord event files: [u64 length][u32 crc][event][u32 crc].

    Parsed here by hand (the writer package has no reader), so the test does not trust
    the code that wrote the file.
    """
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                yield event.step, value


def read_events(logdir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from the event files."""
    out: dict[str, dict[int, float]] = {}
    for step, value in _values(logdir):
        out.setdefault(value.tag, {})[step] = value.simple_value
    return out


def read_descriptions(logdir) -> dict[str, set[str]]:
    """tag -> the descriptions its values carry."""
    out: dict[str, set[str]] = {}
    for _, value in _values(logdir):
        out.setdefault(value.tag, set()).add(value.metadata.summary_description)
    return out


def _assert_events_match(events, history) -> None:
    # float32 in the event file: values agree with the float64 records to float32 rounding.
    for record in history:
        expected = {
            "train/loss": record.train_loss,
            "grad_norm/mean": record.grad_norm.mean,
            "epsilon/rdp-classic": record.epsilon["rdp-classic"],
            "metrics/test_accuracy": record.test_accuracy,
        }
        for tag, value in expected.items():
            assert events[tag][record.step] == pytest.approx(value, rel=2**-23), tag
    assert set(tracking.scalars(history[0])) == set(events)


def test_sink_writes_each_records_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    history = rundir.read_epochs(fake_run(tmp_path / "run", accs=(0.5, 0.625, 0.75)))
    sink = tracking.TensorBoardSink(tmp_path / "tb")
    for record in history:
        sink.write(record)
    sink.close()
    _assert_events_match(read_events(tmp_path / "tb"), history)
    # Training diagnostics are labelled where they are written; held-out metrics and eps not.
    described = read_descriptions(tmp_path / "tb")
    for tag in ("train/loss", "train/batch_size_mean", "grad_norm/max"):
        (text,) = described[tag]
        assert "not covered by eps" in text, tag
    assert described["metrics/test_accuracy"] == described["epsilon/rdp-classic"] == {""}


def test_sink_leaves_out_infinite_eps(tmp_path):
    pytest.importorskip("tensorboardX")
    history = rundir.read_epochs(fake_run(tmp_path / "run", noise_multiplier=0.0, eps=None))
    tags = set(tracking.scalars(history[0]))
    assert "metrics/test_accuracy" in tags and not any(t.startswith("epsilon/") for t in tags)


@pytest.mark.slow
def test_train_flag_writes_events_after_the_records(tiny_data_dir, tmp_path):
    pytest.importorskip("tensorboardX")
    out, logdir = tmp_path / "run", tmp_path / "tb"
    res = runner.invoke(app, [
        "train", "--dataset", "fashion-mnist", "--data-dir", str(tiny_data_dir), "--epochs", "1",
        "--batch-size", "100", "--limit-train", "200", "--noise-multiplier", "1.0",
        "--max-physical-batch", "128", "--quiet", "--out", str(out), "--tensorboard", str(logdir),
        "--model", "tests.zoo:tiny_mlp",  # any model: the events are the records' scalars
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    _assert_events_match(read_events(logdir), rundir.read_epochs(out))


def test_missing_writer_names_the_extra(tiny_data_dir, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name.startswith("tensorboardX"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    res = runner.invoke(app, [
        "train", "--dataset", "fashion-mnist", "--data-dir", str(tiny_data_dir), "--epochs", "1",
        "--batch-size", "100", "--limit-train", "200", "--noise-multiplier", "1.0", "--quiet",
        "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb"),
    ])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        "error: --tensorboard needs tensorboardX: pip install -e '.[tensorboard]' "
        "(or pip install tensorboardX)."
    ]
    assert not (tmp_path / "run").exists() and not (tmp_path / "tb").exists()


def test_tensorboard_dir_that_is_a_file_is_refused(tmp_path):
    pytest.importorskip("tensorboardX")
    (tmp_path / "tb").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        tracking.TensorBoardSink(tmp_path / "tb")
