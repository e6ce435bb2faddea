"""End to end: `toolkit train` on a tiny IDX dataset, run records, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.configs import TINY_MODEL, cut_after_epoch_1, tiny_config
from toolkit.cli import app
from toolkit.privacy import accounting
from toolkit.runs import RunConfig, rundir
from toolkit.training import resume, train

runner = CliRunner()


def _cfg(data_dir, **kw) -> RunConfig:
    return tiny_config(data_dir, **kw)


def _strip_times(history):
    return [dataclasses.replace(r, epoch_time_s=0.0, compile_time_s=None) for r in history]


def test_train_writes_complete_record_and_stored_eps_matches_config(tiny_run):
    out, result = tiny_run.out, tiny_run.result  # train(tiny_config(...), out=...)
    summary, history = result.summary, result.history
    assert {p.name for p in out.iterdir()} == {
        "config.json", "epochs.jsonl", "summary.json", "checkpoint.npz"
    }  # fmt: skip
    record = json.loads((out / "config.json").read_text())
    assert record["provenance"]["versions"]["jax"]
    assert rundir.read_epochs(out) == history and len(history) == 2
    cfg = RunConfig.from_dict(record["config"])
    # The stored eps is recomputed independently from the stored config: 600 examples, B=60.
    for name in accounting.ACCOUNTANTS:
        eps = accounting.epsilon(
            accountant=name, noise_multiplier=cfg.noise_multiplier, sampling_prob=60 / 600,
            steps=2 * (600 // 60), delta=cfg.delta,
        )  # fmt: skip
        assert history[-1].epsilon[name] == pytest.approx(eps, rel=1e-9)
        assert result.epsilon[name] == pytest.approx(eps, rel=1e-9)
    assert summary.privacy == "rdp-classic, Poisson sampling"
    last = history[-1]
    assert 0 <= last.test_accuracy <= 1 and len(last.metrics["per_class_accuracy"]) == 10
    assert last.grad_norm.max >= last.grad_norm.median > 0
    assert last.metrics["first_conv_activation_norm"] > 0
    # summary.json keeps the last epoch's headline metrics; the per-class list, the losses
    # and the activation norm stay in epochs.jsonl.
    assert summary.metrics["test_accuracy"] == last.test_accuracy
    assert summary.metrics["per_class_accuracy_std"] == last.metrics["per_class_accuracy_std"]
    for name in ("per_class_accuracy", "test_loss", "first_conv_activation_norm"):
        assert name in last.metrics and name not in summary.metrics, name
    assert rundir.read_summary(out) == summary
    assert abs(last.batch_size_mean - 60) < 5 * math.sqrt(60 / 10)  # Poisson mean over 10 steps


def test_same_seed_same_numbers_and_resume_matches(tiny_run, tmp_path, monkeypatch):
    cfg, full = tiny_run.config, tiny_run.result.history  # run a: uninterrupted
    # Interrupt run b right after the checkpoint of epoch 1 is written, then resume it.
    real_write = rundir.write_epochs
    calls = {"n": 0}

    def crash_after_first(out, history):
        real_write(out, history)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "write_epochs", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=tmp_path / "b")
    monkeypatch.setattr(rundir, "write_epochs", real_write)
    assert len(rundir.read_epochs(tmp_path / "b")) == 1
    resumed = resume(tmp_path / "b").history
    assert _strip_times(resumed) == _strip_times(full)
    za, zb = np.load(tiny_run.out / "checkpoint.npz"), np.load(tmp_path / "b" / "checkpoint.npz")
    assert all(np.array_equal(za[k], zb[k]) for k in za.files if k != "meta")


def test_no_privacy_records_no_epsilon(tiny_data_dir):
    result = train(_cfg(tiny_data_dir, private=False, noise_multiplier=None, epochs=1,
                        **TINY_MODEL))  # fmt: skip
    assert result.summary.epsilon == dict.fromkeys(accounting.ACCOUNTANTS)
    assert result.history[0].grad_norm.fraction_clipped == 0.0


def test_shuffle_runs_are_labelled(tiny_data_dir):
    result = train(_cfg(tiny_data_dir, sampling="shuffle", epochs=1, **TINY_MODEL))
    assert "SHUFFLED" in result.summary.privacy


def test_cli_train_and_resume_finished_run(tiny_data_dir, tmp_path):
    out = tmp_path / "cli"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(tiny_data_dir),
            "--epochs", "1", "--batch-size", "60", "--noise-multiplier", "1.0",
            "--out", str(out), "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "eps (rdp-classic)" in result.output
    again = runner.invoke(app, ["train", "--resume", str(out), "--quiet"])
    assert again.exit_code == 0, again.output


BAD = [
    (["--clip-norm", "0"], "clip_norm=0.0"),
    (["--noise-multiplier", "-1"], "noise_multiplier=-1.0"),
    (["--delta", "1.5"], "delta=1.5"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--batch-size", "601"], "batch_size=601"),
    (["--lr", "0"], "lr=0.0"),
    (["--dataset", "svhn"], "dataset='svhn'"),
    (["--activation", "swish"], "activation='swish'"),
    (["--preset", "imagenet"], "preset='imagenet'"),
    (["--accountant", "gdp"], "accountant='gdp'"),
    (["--sampling", "fixed"], "sampling='fixed'"),
    (["--per-example", "ghost"], "per_example='ghost'"),
    (["--target-epsilon", "1e-6", "--noise-multiplier", None], "target"),
    (["--activation", "relu", "--scale", "2"], "--scale"),
]


@pytest.mark.parametrize("extra, needle", BAD)
def test_bad_input_one_line_exit_2_nothing_written(tiny_data_dir, tmp_path, extra, needle):
    out = tmp_path / "never"
    args = {"--dataset": "fashion-mnist", "--data-dir": str(tiny_data_dir), "--epochs": "1",
            "--batch-size": "60", "--noise-multiplier": "1.0", "--out": str(out)}  # fmt: skip
    flags = []
    for i in range(0, len(extra), 2):
        args[extra[i]] = extra[i + 1]
    for k, v in args.items():
        if v is not None:
            flags += [k, v]
    result = runner.invoke(app, ["train", "--quiet", *flags])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert not out.exists()


def test_out_that_is_not_a_run_is_refused(tiny_data_dir, tmp_path):
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = _cfg(tiny_data_dir, epochs=1)
    with pytest.raises(ValueError, match="exists and is not empty"):
        train(cfg, out=out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    result = runner.invoke(app, ["train", "--resume", str(out), "--quiet"])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_missing_data_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(tmp_path / "nowhere"))
    result = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path / "empty"),
            "--quiet",
            "--noise-multiplier",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],  # fmt: skip
    )
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_divergence_is_a_one_line_error_exit_3_and_keeps_last_checkpoint(tiny_data_dir, tmp_path):
    """ReLU, lr = 1e30, no clipping or noise: float32 overflows to inf/NaN by epoch 2."""
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(tiny_data_dir),
            "--epochs", "3", "--batch-size", "60", "--lr", "1e30", "--no-privacy",
            "--activation", "relu", "--out", str(out), "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "training diverged in epoch" in result.output and "Traceback" not in result.output
    assert not (out / "summary.json").exists()
    kept = rundir.read_epochs(out)  # the epochs before the divergence stay usable
    assert f"diverged in epoch {len(kept) + 1}" in result.output
    assert all(math.isfinite(r.train_loss) for r in kept)


@pytest.mark.parametrize(
    "rule", [dict(clipping="quantile", quantile_lr=0.5), dict(clipping="per-layer")]
)
def test_a_run_of_each_new_clipping_rule_resumes_bit_for_bit(tiny_data_dir, tmp_path, rule):
    """The quantile rule's C_t lives in the optimizer state, so the checkpoint carries it:
    a run cut after epoch 1 and resumed matches the uninterrupted one (records, clip
    norms, checkpoint). Its C moves (it would stay at C_0 if the state were rebuilt)."""
    cfg = tiny_config(tiny_data_dir, keep_checkpoints=1, **TINY_MODEL, **rule)
    full = train(cfg, out=tmp_path / "full")
    cut = cut_after_epoch_1(tmp_path / "full", tmp_path / "cut")
    resumed = resume(cut)
    assert _strip_times(resumed.history) == _strip_times(full.history)
    za, zb = (np.load(d / rundir.CHECKPOINT) for d in (tmp_path / "full", cut))
    assert all(np.array_equal(za[k], zb[k]) for k in za.files if k != "meta")
    clip_norms = [e.clip_norm for e in full.history]
    if rule["clipping"] == "quantile":
        assert len(set(clip_norms)) == 2 and 1.0 not in clip_norms
    else:
        assert clip_norms == [None, None]
