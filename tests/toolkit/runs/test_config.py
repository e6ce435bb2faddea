"""Tests for the parts of toolkit.runs._config that one kind of run added.

The fields `model`, `dataset` (registry name, data file, `python:arrays`), `loss`,
`classification`, `activation=None` and `lr=None` for an optax optimizer; `label`;
`from_flags` with a user's model; `config_from_record` for every kind of config.json;
and the config hash of the paper's runs, which the new fields must not move. The older
range checks of `validate` are tested in tests/toolkit/training and tests/toolkit/cli.
No test here trains or reads a data set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from tests import REPO
from toolkit.base import ToolkitError
from toolkit.nn import ActivationSpec
from toolkit.runs import (
    KINDS,
    PRESETS,
    RunConfig,
    config_from_record,
    from_flags,
    resolve,
    rundir,
    validate,
)

# The fields this change added; at these values they are left out of the hash.
NEW_FIELDS = {"model": "paper-cnn", "loss": "softmax_cross_entropy", "classification": True}
WHERE = "/runs/r1/config.json"

PAPER = RunConfig(dataset="fashion-mnist", noise_multiplier=1.0)
TEMPERED = ActivationSpec("tempered", scale=2.27, inverse_temp=2.61, offset=1.28)
# Your own model, data file, loss and optax optimizer: nothing of the paper CNN is set.
USER = RunConfig(
    dataset="data/train.npz",
    activation=None,
    model="mypkg.models:make",
    loss="mypkg.losses:hinge",
    classification=False,
    optimizer="python:chain",
    lr=None,
    noise_multiplier=1.0,
)


def _refused(cfg: RunConfig, *needles: str) -> str:
    with pytest.raises(ToolkitError) as e:
        validate(cfg)
    message = str(e.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def _user(**changes) -> RunConfig:
    return dataclasses.replace(USER, **changes)


# --- validate: what is accepted ----------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"dataset": "data/train.csv"},
        {"dataset": "/abs/Train.NPZ"},  # the suffix is matched case-insensitively
        {"dataset": "python:arrays"},  # arrays given in Python (toolkit.fit)
        {"dataset": "mnist"},  # a registry data set with your own model
        {"model": "python:MLP"},  # a model object given in Python
        {"model": "mypkg.models:Zoo.small"},  # a nested attribute
        {"loss": "sigmoid_binary_cross_entropy"},
        {"loss": "softmax_cross_entropy", "classification": True},
        {"loss": "python:my_loss"},
        {"optimizer": "adam", "lr": 1e-3},  # a built-in optimizer with your own model
        {"optimizer": "python:GradientTransformationExtraArgs"},
    ],
)
def test_validate_accepts_a_users_model_data_loss_and_optimizer(changes):
    # The model and loss are checked by form only: validation imports nothing (a record
    # read on another machine, where mypkg is not installed, stays readable).
    # Catches: a check that only knows the registries, or that needs an activation.
    validate(_user(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"dataset": "cifar10", "activation": ActivationSpec("relu")},
        {"activation": TEMPERED},
        {"weight_standardization": True},
        {"dataset": "data/train.npz"},  # the paper CNN on a data file
        {"loss": "sigmoid_binary_cross_entropy", "classification": False},
    ],
)
def test_validate_accepts_the_paper_cnn_with_an_activation(changes):
    validate(dataclasses.replace(PAPER, **changes))


def test_resolve_keeps_the_new_fields():
    # Catches: resolve rebuilding the config from the older fields only (the user's model
    # would silently become the paper CNN). The calibrating branch is left out: it costs
    # 0.7 s of brentq here, and it fills in sigma by the same `dataclasses.replace`.
    assert resolve(USER, num_examples=1000) == USER
    plain = resolve(
        dataclasses.replace(USER, private=False, noise_multiplier=None), num_examples=1000
    )
    assert plain == dataclasses.replace(
        USER, private=False, clip_norm=float("inf"), noise_multiplier=0.0
    )


# --- validate: what is refused, in one line naming the field ----------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "resnet50"),  # not a registry name, not an import path
        ("model", "mypkg.models"),  # no attribute
        ("model", "my-pkg:make"),  # not a module name
        ("loss", "mse"),
        ("loss", "mypkg.losses:"),
        ("dataset", "imagenet"),
        ("dataset", "data/train.txt"),
        ("dataset", "data/train.npy"),
    ],
)
def test_validate_refuses_unknown_names(field, value):
    # Catches: accepting any string (the error would surface as an import error or a
    # missing data set only after the run directory was made).
    message = _refused(_user(**{field: value}), f"{field}={value!r} is unknown")
    assert message.startswith(f"{field}=")


def test_unknown_model_lists_the_registry_and_the_import_form():
    _refused(_user(model="cnn"), "expected one of paper-cnn, or package.module:factory")


@pytest.mark.parametrize(
    "changes",
    [
        {"activation": ActivationSpec("tanh")},
        {"activation": ActivationSpec("relu"), "model": "python:MLP"},
        {"weight_standardization": True},
    ],
)
def test_validate_refuses_paper_cnn_settings_with_a_users_model(changes):
    # Catches: recording an activation that the user's model never used (a table would
    # then list the run under "tanh"), or weight standardisation that nothing applies.
    cfg = _user(**changes)
    _refused(cfg, "activation and weight_standardization", f"model={cfg.model!r}")


def test_validate_refuses_the_paper_cnn_without_an_activation():
    _refused(dataclasses.replace(PAPER, activation=None), "model='paper-cnn' needs an activation")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"lr": 0.1}, "lr"),
        ({"momentum": 0.9}, "momentum"),
        ({"lr_schedule": "cosine"}, "lr_schedule"),
        ({"warmup_epochs": 1, "epochs": 3}, "warmup_epochs"),
    ],
)
def test_validate_refuses_builtin_optimizer_settings_with_an_optax_object(changes, field):
    # Catches: silently ignoring lr/momentum/schedule that the optax object does not use
    # (the record would claim a learning rate the run never had).
    _refused(_user(**changes), "optimizer='python:chain' is an optax object", field)


def test_lr_none_is_only_for_an_optax_object():
    # Catches: letting lr=None through for sgd (a TypeError inside optax, not exit 2).
    _refused(_user(optimizer="sgd"), "lr=None must be finite and > 0")


@pytest.mark.parametrize("value", [1, "yes", None])
def test_classification_must_be_a_bool(value):
    _refused(_user(classification=value), f"classification={value!r} must be true or false")


# --- RunConfig.label --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, label",
    [
        (PAPER, "tanh"),
        (dataclasses.replace(PAPER, activation=TEMPERED), "tempered(s=2.27,T=2.61,o=1.28)"),
        (USER, "make"),
        (_user(model="mypkg.models:Zoo.small"), "Zoo.small"),
        (_user(model="python:MLP"), "MLP"),
        (_user(model="python:Net.<locals>.Head"), "Net.<locals>.Head"),
    ],
)
def test_label_is_the_activation_or_the_models_name(cfg, label):
    # Catches: labelling every run by activation (None for a user model), or keeping the
    # module path / "python:" prefix in a table's row label.
    assert cfg.label == label


# --- from_flags with a user's model -----------------------------------------------------------


@pytest.mark.parametrize(
    "preset_name", ["fashion-mnist-tanh", "mnist-relu", "fashion-mnist-tempered-ws-pld-ema"]
)
def test_from_flags_with_a_model_drops_the_presets_paper_cnn_settings(preset_name):
    cfg = from_flags({"model": "mypkg.models:make"}, preset_name=preset_name)
    # Catches: keeping the preset's activation / weight standardisation (validate would
    # then refuse every preset combined with --model).
    assert cfg.activation is None and cfg.weight_standardization is False
    # ... and only those: the preset's optimisation and privacy settings still apply.
    kept = {k: v for k, v in PRESETS[preset_name].items()
            if k not in ("activation", "weight_standardization")}  # fmt: skip
    assert {k: getattr(cfg, k) for k in kept} == kept
    assert cfg.model == "mypkg.models:make"
    validate(cfg)


def test_from_flags_takes_the_model_from_a_settings_file():
    cfg = from_flags({}, file={"preset": "mnist-tanh", "model": "mypkg.models:make"})
    # Catches: looking for the model in the flags only.
    assert (cfg.model, cfg.activation, cfg.dataset) == ("mypkg.models:make", None, "mnist")


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"activation": "relu"}, "--activation"),
        ({"activation": "tempered", "scale": 3.0}, "--activation, --scale"),
        ({"inverse_temp": 2.0}, "--inverse-temp"),
        ({"offset": 0.5}, "--offset"),
    ],
)
def test_from_flags_refuses_an_explicit_activation_with_a_model(kwargs, flag):
    with pytest.raises(ToolkitError) as e:
        from_flags({"model": "mypkg.models:make"}, preset_name="fashion-mnist-tanh", **kwargs)
    message = str(e.value)
    # Catches: dropping an explicit --activation silently, as a preset's is dropped (the
    # user asked for something the run would not do).
    assert "\n" not in message
    assert message.startswith(flag + ":")
    assert "--model=mypkg.models:make is your own model" in message


def test_from_flags_refuses_weight_standardization_flag_with_a_model():
    with pytest.raises(ToolkitError, match=r"^--weight-standardization: "):
        from_flags({"model": "mypkg.models:make", "weight_standardization": True})
    # False is what the parser gives when the flag is absent: not an error.
    cfg = from_flags({"model": "mypkg.models:make", "weight_standardization": False})
    assert cfg.weight_standardization is False


def test_from_flags_keeps_the_activation_for_the_paper_cnn():
    # Catches: dropping the activation whenever a `model` key is present, even paper-cnn.
    cfg = from_flags({"model": "paper-cnn"}, preset_name="mnist-relu", activation="tanh")
    assert cfg.activation == ActivationSpec("tanh")


# --- config_from_record -------------------------------------------------------------------


def _through_json(cfg: RunConfig, kind: str | None) -> dict:
    record = {"config": cfg.to_dict(), "config_hash": rundir.config_hash(cfg)}
    if kind is not None:
        record["kind"] = kind
    return json.loads(json.dumps(record))  # as config.json holds it


PAPER_RECORDED = dataclasses.replace(
    PAPER,
    dataset="mnist",
    activation=TEMPERED,
    weight_standardization=True,
    ema_decay=0.99,
    augmult=4,
    data_dir="/data",
)


@pytest.mark.parametrize("kind", ["run", "train", None])
@pytest.mark.parametrize("cfg", [PAPER_RECORDED, USER], ids=["paper", "user-model"])
def test_config_from_record_round_trips_to_dict(cfg, kind):
    # Catches: an activation dict not turned back into an ActivationSpec, None activation
    # or lr lost, or a new field dropped on the way back.
    assert config_from_record(_through_json(cfg, kind), where=WHERE) == cfg


def test_kinds_are_run_train_and_fit():
    assert KINDS == ("run", "train", "fit")


def test_the_parent_commits_train_record_reads_back_with_its_hash():
    """tests/data/parent_records/run/config.json was written by commit d6d7225, before
    `model`, `loss`, `classification` (and the issue-12 fields) existed."""
    record = json.loads((REPO / "tests/data/parent_records/run/config.json").read_text())
    assert "kind" not in record and not set(NEW_FIELDS) & set(record["config"])
    cfg = config_from_record(record, where=WHERE)
    assert (cfg.model, cfg.loss, cfg.classification) == tuple(NEW_FIELDS.values())
    assert cfg.activation == ActivationSpec("tanh") and cfg.lr == 0.5
    # The hash that the old code wrote: `--resume` compares the two (exact string).
    assert rundir.config_hash(cfg) == record["config_hash"] == "93ca41309d6f8cde"


OLD_FIT = {
    "num_train": 1000, "batch_size": 100, "epochs": 3, "clip_norm": 1.0, "clipping": "flat",
    "gamma": 0.01, "noise_multiplier": 1.0, "target_epsilon": None, "delta": 1e-5,
    "accountant": "rdp-classic", "sampling": "poisson", "seed": 7, "per_example": "vmap",
    "max_physical_batch": 64, "model": "MLP", "loss": "softmax_cross_entropy",
    "optimizer": "chain", "ema_decay": 0.9, "augment": "Augmult(k=4, max_shift=2, flip=True)",
}  # fmt: skip


def _fit_record(**changes) -> dict:
    return {"kind": "fit", "config": {**OLD_FIT, **changes}, "config_hash": "0123456789abcdef"}


def test_config_from_record_reads_an_old_fit_record():
    cfg = config_from_record(_fit_record(), where=WHERE)
    expected = RunConfig(
        dataset="python:arrays", activation=None, epochs=3, batch_size=100,
        max_physical_batch=64, per_example="vmap", optimizer="python:chain", lr=None,
        clipping="flat", clip_norm=1.0, gamma=0.01, noise_multiplier=1.0,
        target_epsilon=None, delta=1e-5, accountant="rdp-classic", sampling="poisson", seed=7,
        ema_decay=0.9, augmult=4, model="python:MLP", loss="softmax_cross_entropy",
    )  # fmt: skip
    # Catches: any field mapped to the wrong name or left at its RunConfig default
    # (seed 7, per_example "vmap", max_physical_batch 64, ema_decay 0.9 all differ from it).
    assert cfg == expected
    assert cfg.label == "MLP" and cfg.private and cfg.classification


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"augment": None}, {"augmult": 0}),
        ({"augment": "Augmult(k=16, max_shift=2, flip=True)"}, {"augmult": 16}),
        ({"ema_decay": None}, {"ema_decay": None}),
        ({"loss": "my_hinge"}, {"loss": "python:my_hinge"}),
        ({"loss": "sigmoid_binary_cross_entropy"}, {"loss": "sigmoid_binary_cross_entropy"}),
        ({"optimizer": "sgd"}, {"optimizer": "python:sgd", "lr": None}),
    ],
)
def test_old_fit_record_fields(changes, expected):
    # Catches: "k=16" read as one digit; a named loss prefixed with python: (it would
    # then need the function passed again); an optax object's name taken as built-in sgd.
    cfg = config_from_record(_fit_record(**changes), where=WHERE)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_old_fit_record_without_optional_fields_reads():
    d = {k: v for k, v in OLD_FIT.items() if k not in ("ema_decay", "augment")}
    cfg = config_from_record({"kind": "fit", "config": d}, where=WHERE)
    assert (cfg.ema_decay, cfg.augmult) == (None, 0)


@pytest.mark.parametrize("kind", ["audit", "Run", 3, None])
def test_unknown_kind_is_one_line_naming_the_file(kind):
    record = {"kind": kind, "config": PAPER.to_dict()}
    with pytest.raises(ToolkitError) as e:
        config_from_record(record, where=WHERE)
    # Catches: reading an audit's or another program's config.json as a run.
    assert (
        str(e.value) == f"{WHERE} has kind {kind!r}; this toolkit reads the kinds run, train, fit."
    )


@pytest.mark.parametrize("kind", ["run", "train"])
def test_record_missing_fields_is_one_line_naming_the_file_and_fields(kind):
    d = PAPER.to_dict()
    del d["epochs"], d["seed"]
    with pytest.raises(ToolkitError) as e:
        config_from_record({"kind": kind, "config": d}, where=WHERE)
    # Catches: filling a missing epochs/seed from the defaults (a different run than the
    # one recorded, resumed under the wrong settings).
    assert str(e.value) == f"{WHERE} is not a valid run config (it lacks epochs, seed)."


def test_fit_record_missing_a_field_is_one_line_naming_the_file():
    d = {k: v for k, v in OLD_FIT.items() if k != "clip_norm"}
    with pytest.raises(ToolkitError) as e:
        config_from_record({"kind": "fit", "config": d}, where=WHERE)
    message = str(e.value)
    # Catches: a KeyError traceback from the old-layout mapping.
    assert "\n" not in message
    assert message == f"{WHERE} is not a valid run config (KeyError: 'clip_norm')."


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"model": "resnet"}, "model='resnet' is unknown"),
        ({"activation": None}, "model='paper-cnn' needs an activation"),
        ({"optimizer": "python:chain"}, "optimizer='python:chain' is an optax object"),
        ({"classification": "yes"}, "classification='yes' must be true or false"),
    ],
)
def test_record_with_an_invalid_source_is_one_line_naming_the_file(changes, needle):
    d = {**PAPER.to_dict(), **changes}
    with pytest.raises(ToolkitError) as e:
        config_from_record({"kind": "run", "config": d}, where=WHERE)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{WHERE} is not a valid run config (") and needle in message


@pytest.mark.parametrize("record", [[], {"kind": "run"}, {"config": "x"}])
def test_record_without_a_config_object_is_refused(record):
    with pytest.raises(ToolkitError, match="no JSON object 'config'"):
        config_from_record(record, where=WHERE)


# --- the config hash ----------------------------------------------------------------------


def _hash_without(cfg: RunConfig, dropped) -> str:
    """The hash as written before `dropped` existed (rundir.config_hash's formula)."""
    d = cfg.to_dict()
    for key in ("data_dir", *dropped):
        del d[key]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
def test_paper_config_hash_is_unchanged_by_the_new_fields_at_their_defaults(preset_name):
    """A run directory stores config_hash and `--resume` refuses a run whose config no
    longer hashes to it (and sweeps find finished runs by it). If model, loss or
    classification entered the hash at their defaults, every paper run recorded before
    them would be refused on resume and re-run by a sweep."""
    cfg = from_flags({}, preset_name=preset_name)
    assert cfg.model == "paper-cnn"
    old_fields = [k for k, v in RunConfig.HASH_DEFAULTS.items()
                  if k not in NEW_FIELDS and getattr(cfg, k) == v]  # fmt: skip
    # Catches: a new field missing from HASH_DEFAULTS, or present with another default.
    assert rundir.config_hash(cfg) == _hash_without(cfg, [*old_fields, *NEW_FIELDS])


def test_plain_fashion_mnist_config_hash_equals_the_dict_without_the_new_keys():
    cfg = RunConfig(dataset="fashion-mnist", epochs=2, batch_size=60, lr=0.5, seed=3,
                    noise_multiplier=0.8, max_physical_batch=64)  # fmt: skip
    old = [k for k in RunConfig.HASH_DEFAULTS if k not in NEW_FIELDS]
    assert rundir.config_hash(cfg) == _hash_without(cfg, [*old, *NEW_FIELDS])
    # The same run as the parent commit's record (above): its hash, computed by old code.
    assert rundir.config_hash(cfg) == "93ca41309d6f8cde"


@pytest.mark.parametrize(
    "cfg, other",
    [
        (_user(model="mypkg.models:make"), _user(model="mypkg.models:other")),
        (PAPER, dataclasses.replace(PAPER, loss="sigmoid_binary_cross_entropy")),
        (PAPER, dataclasses.replace(PAPER, classification=False)),
    ],
    ids=["model", "loss", "classification"],
)
def test_new_fields_away_from_their_defaults_change_the_hash(cfg, other):
    # Catches: dropping the new keys from the hash whatever their value (two runs with
    # different models would share a hash: one could resume from the other's checkpoint).
    assert rundir.config_hash(cfg) != rundir.config_hash(other)
