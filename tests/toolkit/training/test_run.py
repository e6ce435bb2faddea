"""One kind of run (`toolkit.training._run`): what a run of `fit` records, and `resume` and
`load_run` of runs whose model and data are named, imported, or given in Python.

A kill is simulated from an uninterrupted run's own files: with `keep_checkpoints=1` its
directory holds what a kill during epoch 2 would have left (`tests.configs.cut_after_epoch_1`),
so one run gives both sides of each comparison.

Exact equality. The resumed run redoes the later epochs from the restored bytes of the
parameters and the optimizer state, with the batches and noise keys of (seed, step), and
for a model that draws randomness the keys of (secret key, step, example): the same
computations at the same shapes on the same machine, which XLA on CPU runs
deterministically. So every parameter, every optimizer-state array and every recorded
number except the timings is bitwise that of the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import toolkit
from tests import zoo
from tests.configs import cut_after_epoch_1
from toolkit.base import ToolkitError
from toolkit.runs import RunConfig, rundir


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a checkpoint (params, optimizer and model state, the noise key)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "meta"}


def _same_arrays(a: Path, b: Path) -> bool:
    x, y = _arrays(a), _arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def _timeless(history):
    return [dataclasses.replace(r, epoch_time_s=0.0, compile_time_s=None) for r in history]


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def _params(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _assert_resumed_as_whole(cut: Path, whole: Path, resumed, uninterrupted, epochs: int) -> None:
    """The resumed directory and result are those of the uninterrupted run, bitwise."""
    assert _timeless(resumed.history) == _timeless(rundir.read_epochs(whole))
    assert _timeless(rundir.read_epochs(cut)) == _timeless(rundir.read_epochs(whole))
    assert len(resumed.history) == epochs
    for name in (rundir.CHECKPOINT, *(rundir.kept_checkpoint(e) for e in range(1, epochs + 1))):
        assert _same_arrays(cut / name, whole / name), name
    mine, theirs = _params(resumed.model), _params(uninterrupted.model)
    assert len(mine) == len(theirs) > 0
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))
    times = {"train_time_s": 0.0, "compile_time_s": None}
    summary = rundir.read_summary(whole)
    assert dataclasses.replace(resumed.summary, **times) == dataclasses.replace(summary, **times)


def test_a_factory_run_records_its_optimizer_in_full_and_resumes_bit_for_bit(
    tiny_data_dir, monkeypatch, tmp_path
):
    """A factory with an import path, a named data set and `toolkit.optimizer`: the run
    directory alone rebuilds all of it. Epoch 2 of 3 lies in the warm-up (2 epochs): a
    resume that lost the schedule, the momentum or the step count would move it."""
    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(tiny_data_dir))  # fashion-mnist: 600 / 200
    optimizer = toolkit.optimizer("sgd", lr=0.5, momentum=0.9, warmup_epochs=2)
    whole = toolkit.fit(zoo.tiny_mlp, "fashion-mnist", optimizer=optimizer, batch_size=120,
                        epochs=3, clip_norm=1.0, noise_multiplier=0.8, seed=3,
                        keep_checkpoints=1, out=tmp_path / "whole")  # fmt: skip
    record = json.loads((tmp_path / "whole" / rundir.CONFIG).read_text())
    cfg = record["config"]
    assert record["kind"] == "run" and RunConfig.from_dict(cfg) == whole.config
    assert (cfg["model"], cfg["dataset"], cfg["loss"], cfg["activation"]) == (
        "tests.zoo:tiny_mlp", "fashion-mnist", "softmax_cross_entropy", None
    )  # fmt: skip
    assert (cfg["optimizer"], cfg["lr"], cfg["momentum"], cfg["lr_schedule"]) == (
        "sgd", 0.5, 0.9, "constant"
    )  # fmt: skip
    assert (cfg["warmup_epochs"], cfg["keep_checkpoints"], cfg["epochs"]) == (2, 1, 3)
    assert whole.history[-1].test_accuracy is not None  # the named set's test split
    cut = cut_after_epoch_1(tmp_path / "whole", tmp_path / "cut")
    resumed = toolkit.resume(cut)  # nothing given again: all of it is in config.json
    _assert_resumed_as_whole(cut, tmp_path / "whole", resumed, whole, epochs=3)


@dataclasses.dataclass(frozen=True)
class _Run:
    out: Path
    result: toolkit.FitResult
    train: tuple[np.ndarray, np.ndarray]
    held_out: tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def instance_run(tmp_path_factory) -> _Run:
    """A model instance with dropout (so per-example keys matter), arrays given in Python,
    eval_data: a run of `python:` objects, 2 epochs, both checkpoints kept."""
    out = tmp_path_factory.mktemp("instance") / "whole"
    train, held_out = zoo.vectors(120), zoo.vectors(60, seed=1)
    result = toolkit.fit(zoo.DropoutMlp(nnx.Rngs(0)), train,
                         optimizer=toolkit.optimizer("sgd", lr=0.5), batch_size=30, epochs=2,
                         clip_norm=1.0, noise_multiplier=0.8, seed=3, delta=1e-3,
                         keep_checkpoints=1, eval_data=held_out, out=out)  # fmt: skip
    return _Run(out, result, train, held_out)


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_a_run_of_python_objects_resumes_only_with_them_given_again(instance_run, tmp_path):
    cfg = toolkit.load_run(instance_run.out, model=zoo.DropoutMlp(nnx.Rngs(1))).config
    assert (cfg.model, cfg.dataset, cfg.optimizer) == ("python:DropoutMlp", "python:arrays", "sgd")
    cut = cut_after_epoch_1(instance_run.out, tmp_path / "cut")
    before = _files(cut)
    with pytest.raises(ToolkitError) as e:
        toolkit.resume(cut)
    message = _one_line(e)
    assert "its model and train_data were given in Python" in message
    assert "(python:DropoutMlp, python:arrays)" in message
    assert "pass model= and train_data= again" in message
    with pytest.raises(ToolkitError) as e:
        toolkit.resume(cut, model=zoo.DropoutMlp(nnx.Rngs(0)))
    assert "its train_data was given in Python (python:arrays)" in _one_line(e)
    given = dict(train_data=instance_run.train, eval_data=instance_run.held_out)
    # A factory draws another initialisation and other dropout keys than the instance did.
    with pytest.raises(ToolkitError) as e:
        toolkit.resume(cut, model=zoo.DropoutMlp, **given)
    assert "model= is a factory, but the run was made from an nnx.Module instance" in _one_line(e)
    # Without eval_data, epoch 2 would silently lose the held-out metrics epoch 1 has.
    with pytest.raises(ToolkitError) as e:
        toolkit.resume(cut, model=zoo.DropoutMlp(nnx.Rngs(0)), train_data=instance_run.train)
    assert "pass the same eval_data= again" in _one_line(e)
    assert _files(cut) == before  # a refused resume writes nothing
    resumed = toolkit.resume(cut, model=zoo.DropoutMlp(nnx.Rngs(0)), **given)
    assert "test_accuracy" in resumed.history[-1].metrics
    _assert_resumed_as_whole(cut, instance_run.out, resumed, instance_run.result, epochs=2)


class _Narrow(zoo.DropoutMlp):
    def __init__(self, rngs: nnx.Rngs):
        super().__init__(rngs, d=7)  # fc1 kernel (7, 32) where the run has (8, 32)


class _Normed(zoo.DropoutMlp):
    def __init__(self, rngs: nnx.Rngs):
        super().__init__(rngs)
        self.norm = nnx.LayerNorm(32, rngs=rngs)  # a layer the run's model does not have


@pytest.mark.parametrize(
    "wrong, detail",
    [
        (lambda: _Narrow(nnx.Rngs(0)), "tree/params/fc1/kernel/value is (8, 32) float32 in the "
         "checkpoint, (7, 32) float32 in the model"),
        (lambda: _Normed(nnx.Rngs(0)), "the checkpoint has no array tree/params/norm"),
        (lambda: zoo.Logit(nnx.Rngs(0)), "the model has no array tree/params/fc1"),  # fewer
    ],
    ids=["shape", "extra-layer", "missing-layer"],
)  # fmt: skip
def test_load_run_of_another_model_says_the_checkpoint_is_intact_and_changes_nothing(
    instance_run, wrong, detail
):
    before = _files(instance_run.out)
    for epoch in (None, 1):
        with pytest.raises(ToolkitError) as e:
            toolkit.load_run(instance_run.out, model=wrong(), epoch=epoch)
        message = _one_line(e)
        assert "does not match the checkpoint" in message and "which is intact" in message
        assert detail in message
    assert _files(instance_run.out) == before


def test_load_run_takes_the_structure_from_an_instance_a_factory_or_a_function(instance_run):
    """Its values are replaced by the checkpoint's: any initialisation gives one model."""
    x = jax.numpy.asarray(instance_run.held_out[0])
    outputs = []
    for model in (
        zoo.DropoutMlp(nnx.Rngs(5)),  # an instance
        zoo.DropoutMlp,  # a factory, called as DropoutMlp(rngs=...)
        lambda: zoo.DropoutMlp(nnx.Rngs(6)),  # a function of no arguments
    ):
        loaded = toolkit.load_run(instance_run.out, model=model).model
        loaded.eval()
        outputs.append(np.asarray(loaded(x)))
    assert all(np.array_equal(o, outputs[0]) for o in outputs[1:])
    final = _arrays(instance_run.out / rundir.CHECKPOINT)["tree/params/fc1/kernel/value"]
    assert np.array_equal(np.asarray(loaded.fc1.kernel[...]), final)
