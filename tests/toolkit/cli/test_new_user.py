"""What a new user met: values that were changed or dropped without a word, and messages
that named the wrong thing. Each case is an `error:` line naming the argument and the
value, exit 2, nothing written (`test_inputs._fails_cleanly`), or a correct result."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from tests.configs import TINY_MODEL, tiny_config
from tests.run_fakes import fake_run
from tests.toolkit.cli.test_inputs import _fails_cleanly, ws  # noqa: F401 (a fixture)
from toolkit.base import plain_number
from toolkit.cli import _launch as launch
from toolkit.cli import app
from toolkit.privacy import PrivacyParams
from toolkit.runs import RunConfig, rundir
from toolkit.training import optimizer, train

_TINY = ["--data-dir", "{data}", "--batch-size", "60", "--noise-multiplier", "1", "--quiet",
         "--out", "{ws}/new"]  # fmt: skip
CASES = [
    (["train", "--epochs", "2", "--epochs", "3", *_TINY], "--epochs is given twice"),
    (["train", "--epochs=2", "--epochs", "2", *_TINY], "--epochs is given twice"),
    (["train", "--quiet", *_TINY], "--quiet is given twice"),
    (["account", "--n", "100", "--n", "200"], "--n is given twice"),
    (
        ["train", "--data-dir", "{data}", "--noise-multiplier", "1", "--out", ""],
        "--out='' is an empty path",
    ),
    (
        ["train", "--data-dir=", "--noise-multiplier", "1", "--out", "{ws}/new"],
        "--data-dir='' is an empty path",
    ),
    (["train", "--limit-train", "99999999", *_TINY], "limit_train=99999999 is more than the 600"),
    (["train", "--limit-train", "601", *_TINY], "limit_train=601 is more than the 600"),
    (
        ["train", "--validation", "100", "--limit-train", "501", *_TINY],
        "after the validation split of 100",
    ),
    (
        ["train", "--data-dir", "{ws}/full", "--noise-multiplier", "1", "--out", "{ws}/new"],
        "holds no fashion-mnist files",
    ),
    (
        [
            "train",
            "--config",
            "{ws}/edited/config.json",
            "--data-dir",
            "{data}",
            "--out",
            "{ws}/new",
        ],
        "its 'config' was edited after the run",
    ),
    (["train", "--eval-every", "0", *_TINY], "eval_every=0"),
    (["table", ""], "RUNS='' is an empty path"),
    (["pareto", "", "--out", "{ws}/p"], "RUNS='' is an empty path"),
    (
        ["train", "--quiet=1", "--noise-multiplier", "1", "--out", "{ws}/new"],
        "--quiet is a flag and takes no value (got --quiet=1). (see toolkit train --help)",
    ),
    (
        ["train", "--noise-multiplier", "1", "--out", "{ws}/a-file"],
        "--out={ws}/a-file is not a directory; choose a new directory.",
    ),
    (
        ["train", "--noise-multiplier", "1", "--out", "{links}/dangling/run"],
        "is a symbolic link to {links}/nowhere, which does not exist",
    ),
]


@pytest.mark.parametrize("args, needle", CASES)
def test_silent_changes_are_errors(args, needle, ws, capsys):  # noqa: F811
    root, data = ws
    fake_run(root / "edited", data_dir=str(data))
    record = json.loads((root / "edited" / rundir.CONFIG).read_text())
    record["config"]["noise_multiplier"] = 7.0  # edited by hand
    (root / "edited" / rundir.CONFIG).write_text(json.dumps(record))
    links = root.parent / f"{root.name}-links"  # outside `root`, whose files are compared
    links.mkdir()
    (links / "dangling").symlink_to(links / "nowhere")
    args = [a.format(ws=root, data=data, links=links) for a in args]
    line = _fails_cleanly(args, capsys, root, needle.format(ws=root, links=links))
    assert "--resume" not in line or "exists and is not empty" in line


def test_an_unedited_run_config_still_reruns(ws, capsys):  # noqa: F811
    from toolkit.runs import from_flags, load_settings

    root, data = ws
    fake_run(root / "kept", data_dir=str(data))
    again = from_flags({}, file=load_settings(root / "kept" / rundir.CONFIG))
    assert again.noise_multiplier == 1.0 and again.epochs == 3


def test_audit_out_message_does_not_suggest_resume(ws, capsys):  # noqa: F811
    root, data = ws
    line = _fails_cleanly(
        ["audit", "--data-dir", str(data), "--out", str(root / "full"), "--quiet"],
        capsys, root, "--out=",
    )  # fmt: skip
    assert "--resume" not in line and "exists and is not empty" in line


def test_a_sweep_file_takes_the_same_rules_as_the_command_line(tmp_path):
    from experiments import sweep as sweep_lib
    from toolkit.base import ToolkitError

    spec = tmp_path / "s.toml"
    spec.write_text("[base]\nprivate = false\ntarget_epsilon = 2.0\n[grid]\nseed = [0, 1]\n")
    with pytest.raises(ToolkitError, match="takes no target_epsilon"):
        sweep_lib.load(spec)


def test_help_shows_flags_without_a_value_type(capsys):
    from typer.testing import CliRunner

    top = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "--help" in top and "<bool>" not in top
    text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    flags = [ln for ln in text.splitlines() if "--no-privacy" in ln or "--quiet" in ln]
    assert len(flags) == 2 and not any("<bool>" in ln for ln in flags), flags
    assert "<int>" in text  # options that take a value still show it
    assert launch.run(app, ["train", "--no-privacy", "true"]) == 2  # a flag takes no value


@pytest.mark.parametrize(
    "boxed, plain",
    [(np.int64(128), 128), (np.float32(0.5), 0.5), (np.float64(0.1), 0.1),
     (jnp.float32(2.0), 2.0), (jnp.int32(3), 3), (np.bool_(True), True), ("a", "a")],
)  # fmt: skip
def test_numpy_and_jax_scalars_are_numbers(boxed, plain):
    value = plain_number(boxed)
    assert value == plain and type(value) is type(plain)


def test_every_entry_point_takes_numpy_and_jax_scalars():
    cfg = RunConfig(epochs=np.int64(2), batch_size=np.int32(64), lr=np.float32(0.5),
                    noise_multiplier=jnp.float32(1.0), seed=np.int64(4))  # fmt: skip
    assert (
        cfg.to_dict()
        == RunConfig(epochs=2, batch_size=64, lr=0.5, noise_multiplier=1.0, seed=4).to_dict()
    )
    assert json.dumps(cfg.to_dict())  # plain JSON numbers
    p = PrivacyParams(num_examples=np.int64(1000), batch_size=np.int64(128), epochs=np.int64(2),
                      noise_multiplier=np.float32(1.0), delta=np.float64(1e-5))  # fmt: skip
    assert p.epsilon() == PrivacyParams(1000, 128, 2, 1.0).epsilon()
    spec = optimizer(
        "sgd", lr=np.float32(0.25), momentum=np.float64(0.9), warmup_epochs=np.int64(1)
    )
    assert spec.fields() == {"optimizer": "sgd", "lr": 0.25, "momentum": 0.9,
                             "lr_schedule": "constant", "warmup_epochs": 1}  # fmt: skip
    assert all(type(v) in (str, int, float) for v in spec.fields().values())


def test_eval_every_k_epochs_evaluates_those_and_the_last(tiny_data_dir):
    cfg = tiny_config(tiny_data_dir, epochs=3, eval_every=2, **TINY_MODEL)
    history = train(cfg).history
    assert ["test_accuracy" in r.metrics for r in history] == [False, True, True]
    full = train(tiny_config(tiny_data_dir, epochs=3, **TINY_MODEL)).history
    # Evaluation is read-only: the trained numbers are the same, epoch for epoch.
    assert [r.train_loss for r in history] == [r.train_loss for r in full]
    assert history[-1].metrics["test_accuracy"] == full[-1].metrics["test_accuracy"]


def test_a_toml_file_with_a_byte_order_mark_reads(tmp_path):
    from toolkit.runs import load_settings

    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeffepochs = 2\r\nlr = 0.5\r\n".encode())
    assert load_settings(path) == {"epochs": 2, "lr": 0.5}
