"""What a run trains, built from its `RunConfig`: the model, the data, the loss, the optimizer.

Each is a registry name, a data file, or an import path `package.module:attribute` that
this module resolves, or an object given in Python (recorded as `python:<name>`), which
is then passed again to continue or read the run (`Objects`).

- model: "paper-cnn" (the paper's CNN for the data's input shape, `toolkit.nn`), or a
  factory called as `factory(rngs=nnx.Rngs(seed))` returning an NNX module.
- data: a name in `toolkit.data.DATASETS` (train and test splits), a `.npz` / `.csv`
  file (`toolkit.data.load_arrays`: `x`, `y`, optional `x_test`, `y_test`), or arrays.
  uint8 inputs from a name or a file are scaled to [0, 1] (`to_float`); other inputs, and
  arrays given in Python, reach the model as they are.
- loss: a name in `toolkit.grads.LOSSES`, or `loss(outputs, labels) -> (batch,)`.
- optimizer: the config's `optimizer`, `lr`, `momentum`, `lr_schedule`, `warmup_epochs`
  (`OptimizerSpec`), or an optax transformation given in Python.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from toolkit.base import ToolkitError, plain_fields, specs
from toolkit.data import (
    DATASETS,
    Dataset,
    load_arrays,
    load_dataset,
    to_float,
    with_validation,
)
from toolkit.grads import LOSSES, LossFn
from toolkit.nn import build_paper_cnn
from toolkit.runs import RunConfig
from toolkit.training._dpsgd import make_optimizer

ARRAYS = specs.ARRAYS  # the `dataset` of arrays given in Python


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A built-in optimizer by name and settings: recorded in full, rebuilt on resume.

    `toolkit.optimizer("sgd", lr=0.5, momentum=0.9, schedule="cosine", warmup_epochs=1)`.
    """

    name: str
    lr: float
    momentum: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        plain_fields(self)  # NumPy and JAX scalars as Python numbers

    def fields(self) -> dict[str, Any]:
        """The `RunConfig` fields that record it (`RunConfig`'s checks judge the values)."""
        return {
            "optimizer": self.name, "lr": self.lr, "momentum": self.momentum,
            "lr_schedule": self.schedule, "warmup_epochs": self.warmup_epochs,
        }  # fmt: skip


def optimizer(
    name: str, *, lr: float, momentum: float = 0.0, schedule: str = "constant",
    warmup_epochs: int = 0,
) -> OptimizerSpec:  # fmt: skip
    """An optimizer `toolkit.fit` records by name and settings: "sgd" or "adam"."""
    return OptimizerSpec(name, lr, momentum, schedule, warmup_epochs)


@dataclasses.dataclass(frozen=True)
class Objects:
    """What was given in Python instead of by name (each None: built from the config)."""

    model: nnx.Module | Callable[..., nnx.Module] | None = None
    train_data: tuple[Any, Any] | None = None
    eval_data: tuple[Any, Any] | None = None
    loss_fn: LossFn | None = None
    optimizer: optax.GradientTransformation | None = None

    def check(
        self, cfg: RunConfig, *, where: str, api: str = "toolkit.resume / toolkit.load_run"
    ) -> None:
        """Each `python:` entry of `cfg` has its object here, and no named one has one.

        Every missing object is named in one error; `api` says where to pass them.
        """
        pairs = (
            ("model", cfg.model, self.model), ("train_data", cfg.dataset, self.train_data),
            ("loss_fn", cfg.loss, self.loss_fn), ("optimizer", cfg.optimizer, self.optimizer),
        )  # fmt: skip
        missing = [(n, r) for n, r, g in pairs if r.startswith(specs.PYTHON) and g is None]
        if missing:
            names = " and ".join(n for n, _ in missing)
            raise ToolkitError(
                f"{where}: its {names} {'was' if len(missing) == 1 else 'were'} given in Python "
                f"({', '.join(r for _, r in missing)}) without an import path; pass "
                f"{' and '.join(n + '=' for n, _ in missing)} again ({api})."
            )
        for name, recorded, given in pairs:
            if given is not None and not recorded.startswith(specs.PYTHON):
                raise ToolkitError(
                    f"{where}: {name} is recorded as {recorded!r} and is built from it; "
                    f"do not pass {name}=."
                )
        if self.eval_data is not None and cfg.dataset != ARRAYS:
            raise ToolkitError(
                f"eval_data is for arrays given in Python; dataset={cfg.dataset!r} has its "
                "own held-out split (its test split, or validation=V)."
            )


def load_data(cfg: RunConfig, objects: Objects = Objects()) -> Dataset:
    """The run's data: the validation split held out first, then `limit_train` applied."""
    if cfg.dataset in DATASETS:
        data = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    elif cfg.dataset == ARRAYS:
        data = _from_arrays(objects.train_data, objects.eval_data)
    else:
        found = load_arrays(cfg.dataset)
        x, y = found.x, found.y
        test = (x[:0], y[:0]) if found.test is None else found.test
        data = Dataset(
            name=cfg.dataset, train_images=x, train_labels=y, test_images=test[0],
            test_labels=test[1], num_classes=_num_classes(y), source=found.path,
        )  # fmt: skip
    if cfg.validation:
        data = with_validation(data, cfg.validation)
    if cfg.limit_train is not None and cfg.limit_train > len(data.train_labels):
        held = f" after the validation split of {cfg.validation}" if cfg.validation else ""
        raise ToolkitError(
            f"limit_train={cfg.limit_train} is more than the {len(data.train_labels)} training "
            f"examples of {cfg.dataset}{held}; give at most {len(data.train_labels)}, or leave "
            "it out to train on all."
        )
    if cfg.limit_train is not None and cfg.limit_train < len(data.train_labels):
        data = dataclasses.replace(
            data,
            train_images=data.train_images[: cfg.limit_train],
            train_labels=data.train_labels[: cfg.limit_train],
        )
    return data


def model_inputs(data: Dataset, images: np.ndarray) -> np.ndarray:
    """What the model is fed: uint8 pixels of a named set or a file as floats in [0, 1]."""
    if data.name == ARRAYS or images.dtype != np.uint8:
        return images
    return to_float(images)


def _num_classes(y: np.ndarray) -> int:
    y = np.asarray(y)
    if y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        return 0
    return int(max(y.max() + 1, 2))


def _from_arrays(train: Any, held_out: Any) -> Dataset:
    x, y = check_pair("train_data", train)
    if held_out is None:
        ex, ey = x[:0], y[:0]
    else:
        ex, ey = check_pair("eval_data", held_out)
    return Dataset(
        name=ARRAYS, train_images=x, train_labels=y, test_images=ex, test_labels=ey,
        num_classes=_num_classes(y), source="arrays given in Python",
    )  # fmt: skip


def check_pair(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ToolkitError(f"{name} must be an (inputs, labels) pair of arrays.")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y) or len(y) == 0:
        raise ToolkitError(
            f"{name}: inputs {x.shape} and labels {y.shape} must have one equal leading size >= 1."
        )
    return x, y


def run_keys(cfg: RunConfig, objects: Objects) -> tuple[jax.Array | None, jax.Array]:
    """(init key, noise key): the seed splits in two when the toolkit builds the model; a
    model instance given in Python is initialised already, and the seed is the noise key."""
    if isinstance(objects.model, nnx.Module):
        return None, jax.random.key(cfg.seed)
    init_key, noise_key = jax.random.split(jax.random.key(cfg.seed))
    return init_key, noise_key


def is_factory(model: Any) -> bool:
    """Whether `model` is a model factory, called as `model(rngs=nnx.Rngs(seed))`: a callable
    (a class too) that is not a module and takes an `rngs` keyword."""
    if isinstance(model, nnx.Module) or not callable(model):
        return False
    try:
        params = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: not a factory
        return False
    return any(
        (p.name == "rngs" and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in params
    )


def check_model_kind(cfg: RunConfig, objects: Objects, *, saved_key, where: str) -> None:
    """The model given again is of the kind the run was made from, or a one-line error.

    `saved_key` is the noise key a checkpoint of the run holds (a key, or its data). It
    is the seed's key when the run was made from a model instance, and half of its split
    when the toolkit built the model (`run_keys`): a factory given for an instance's run
    (or the reverse) would start from another initialisation and draw other keys.
    """
    _, noise_key = run_keys(cfg, objects)
    saved = saved_key
    if isinstance(saved, jax.Array) and jax.dtypes.issubdtype(saved.dtype, jax.dtypes.prng_key):
        saved = jax.random.key_data(saved)
    if np.array_equal(np.asarray(saved), np.asarray(jax.random.key_data(noise_key))):
        return
    if objects.model is None:
        why = "its checkpoint holds another noise key than its seed gives"
    elif isinstance(objects.model, nnx.Module):
        why = "model= is an nnx.Module instance, but the run was made from a factory"
    else:
        why = "model= is a factory, but the run was made from an nnx.Module instance"
    raise ToolkitError(f"{where}: {why} (the noise key differs); pass the model as fit had it.")


def build_model(cfg: RunConfig, data: Dataset, objects: Objects, init_key) -> nnx.Module:
    """The model to train (a fresh one from the factory, or the instance given)."""
    if isinstance(objects.model, nnx.Module):
        return objects.model
    seed = int(jax.random.randint(init_key, (), 0, 2**31 - 1))
    if cfg.paper_model:
        return build_paper_cnn(
            data.train_images.shape[1:], cfg.activation, seed=seed,
            weight_standardization=cfg.weight_standardization,
        )  # fmt: skip
    factory = (
        objects.model if objects.model is not None else specs.load_object(cfg.model, option="model")
    )
    if not callable(factory):
        raise ToolkitError(f"model={cfg.model!r} is not callable; expected a model factory.")
    try:
        model = factory(rngs=nnx.Rngs(seed))
    except Exception as e:  # the user's factory failed: one line naming it
        first = (str(e).splitlines() or [""])[0]
        raise ToolkitError(
            f"model={cfg.model!r}: factory(rngs=nnx.Rngs(seed)) raised {type(e).__name__}: {first}"
        ) from None
    if not isinstance(model, nnx.Module):
        raise ToolkitError(
            f"model={cfg.model!r} returned {type(model).__name__}; expected a flax.nnx.Module "
            "(the factory is called as factory(rngs=nnx.Rngs(seed)))."
        )
    return model


def loss_of(cfg: RunConfig, objects: Objects) -> LossFn | None:
    """The per-example loss; None: the default softmax cross-entropy."""
    if objects.loss_fn is not None:
        return objects.loss_fn
    if cfg.loss == "softmax_cross_entropy":
        return None
    if cfg.loss in LOSSES:
        return LOSSES[cfg.loss]
    fn = specs.load_object(cfg.loss, option="loss")
    if not callable(fn):
        raise ToolkitError(f"loss={cfg.loss!r} is not callable.")
    return fn


def optimizer_of(cfg: RunConfig, objects: Objects, *, steps_per_epoch: int):
    """The optax transformation of the run (built from the config, or the one given)."""
    if objects.optimizer is not None:
        return objects.optimizer
    return make_optimizer(
        cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, schedule=cfg.lr_schedule,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch, total_steps=cfg.epochs * steps_per_epoch,
    )  # fmt: skip
