"""Tests for toolkit.base.specs: import paths `package.module:attribute`.

A run records its model factory and loss by such a path and another process imports it
again (`--resume`, `toolkit bias`), so the path must name the very object, and an object
that cannot be named must say so (`python:<qualname>`) rather than record a path that
imports something else. Every module these tests import is written to a fresh tmp_path
under a name no other test uses, and is dropped from sys.modules afterwards.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest

from toolkit.base import ToolkitError
from toolkit.base.specs import PYTHON, is_import_spec, load_object, spec_of

_counter = itertools.count()

MODULE_SOURCE = """
    def make():
        return "made"

    class Models:
        def small(self):
            return "small"

        class Inner:
            pass

    def outer():
        def inner():
            return 1
        return inner

    shout = lambda: "hi"

    def replaced():
        return "old"

    old_replaced = replaced

    def replaced():  # rebinds the name: the first `replaced` cannot be imported any more
        return "new"

    VALUE = 42
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The cwd is a fresh directory that is not on sys.path; yields a module writer.

    `write(source)` creates `<unique name>.py` there and returns the name. The modules and
    packages written are removed from sys.modules after the test, so no other test (and no
    later test here) sees them through the import cache.
    """
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path) not in sys.path
    written: list[str] = []

    def write(source: str, *, package: str | None = None) -> str:
        name = f"_tk_specs_probe_{os.getpid()}_{next(_counter)}"
        folder = tmp_path
        if package is not None:
            folder = tmp_path / package
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
            written.append(package)
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name if package is None else f"{package}.{name}")
        importlib.invalidate_caches()  # the finders cache directory listings
        return name

    yield write
    for name in list(sys.modules):
        if any(name == w or name.startswith(w + ".") for w in written):
            del sys.modules[name]


def _import(name: str) -> types.ModuleType:
    """The module `name` in the cwd, imported as `load_object` imports it."""
    load_object(f"{name}:VALUE")
    return sys.modules[name]


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# --- is_import_spec --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["mod:f", "pkg.mod:f", "a.b.c:Klass.method", "_private:_x", "os.path:join"],
)
def test_is_import_spec_accepts_module_colon_attribute(spec):
    # Catches: a check that refuses dotted modules or dotted (nested) attributes.
    assert is_import_spec(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "mod",  # no colon
        "mod:",  # no attribute
        ":f",  # no module
        "a:b:c",  # two colons
        "pkg..mod:f",  # an empty module part
        "mod:f.",  # an empty attribute part
        "1mod:f",  # not an identifier
        "my-mod:f",  # not an identifier (a file name, not a module name)
        "mod:f()",  # not an attribute path
        "python:MLP",  # given in Python: has the form, but is never an import path
        "paper-cnn",  # a registry name
        "",
    ],
)
def test_is_import_spec_refuses_everything_else(spec):
    # Catches: dropping the `python:` exclusion (python:MLP would then be imported as a
    # module named "python"), or the identifier checks.
    assert not is_import_spec(spec)


@pytest.mark.parametrize("value", [None, 3, b"mod:f", ("mod", "f")])
def test_is_import_spec_is_false_for_non_strings(value):
    # Catches: an `AttributeError`/`TypeError` from calling str methods on a non-string
    # (a hand-edited config.json can hold any JSON value).
    assert is_import_spec(value) is False


# --- load_object -----------------------------------------------------------------------------


def test_load_object_imports_from_the_current_directory_and_restores_sys_path(workdir):
    name = workdir(MODULE_SOURCE)
    path_before = list(sys.path)
    make = load_object(f"{name}:make")
    assert make() == "made"
    assert load_object(f"{name}:VALUE") == 42
    # Catches: leaving the cwd on sys.path (a later import of an unrelated name would then
    # pick up whatever file of that name happens to lie in the directory a run started in).
    assert sys.path == path_before
    assert os.getcwd() not in sys.path


def test_load_object_follows_dotted_modules_and_attributes(workdir):
    name = workdir(MODULE_SOURCE, package="_tk_specs_pkg")
    obj = load_object(f"_tk_specs_pkg.{name}:Models.small")
    module = sys.modules[f"_tk_specs_pkg.{name}"]
    # Catches: splitting the attribute on "." only once, or getattr with the dotted string.
    assert obj is module.Models.small
    assert load_object(f"_tk_specs_pkg.{name}:Models.Inner") is module.Models.Inner


def test_load_object_keeps_a_cwd_that_was_already_on_sys_path(workdir, monkeypatch):
    name = workdir(MODULE_SOURCE)
    monkeypatch.syspath_prepend(os.getcwd())
    assert load_object(f"{name}:VALUE") == 42
    # Catches: removing the cwd unconditionally (it was the caller's entry, not ours).
    assert sys.path.count(os.getcwd()) == 1


def test_load_object_restores_sys_path_when_the_import_fails(workdir):
    workdir(MODULE_SOURCE)
    path_before = list(sys.path)
    with pytest.raises(ToolkitError):
        load_object("_tk_specs_no_such_module:f")
    # Catches: restoring sys.path only on success (the removal must sit in `finally`).
    assert sys.path == path_before


def test_load_object_without_colon_is_one_line_naming_the_option():
    with pytest.raises(ToolkitError) as e:
        load_object("mymodels.make", option="--model")
    message = _one_line(e)
    # Catches: a raw ValueError from `spec.split(":")` unpacking, or a message without
    # the option the user typed.
    assert message.startswith("--model='mymodels.make'")
    assert "package.module:attribute" in message


def test_load_object_of_a_python_spec_is_one_line_naming_the_option():
    with pytest.raises(ToolkitError) as e:
        load_object("python:MLP", option="model")
    message = _one_line(e)
    # Catches: treating "python:MLP" as module "python", attribute "MLP" (an import error
    # that hides the real cause: the object has to be passed again from Python).
    assert message.startswith("model='python:MLP'")
    assert "pass the object again" in message


def test_load_object_of_a_missing_module_is_one_line_naming_the_option(workdir):
    workdir(MODULE_SOURCE)
    with pytest.raises(ToolkitError) as e:
        load_object("_tk_specs_no_such_module:make", option="loss")
    message = _one_line(e)
    # Catches: letting ModuleNotFoundError through (a traceback instead of exit 2).
    assert message.startswith("loss='_tk_specs_no_such_module:make'")
    assert "cannot import module '_tk_specs_no_such_module'" in message
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_load_object_of_a_missing_attribute_is_one_line_naming_the_option(workdir):
    name = workdir(MODULE_SOURCE)
    for attr in ("nope", "Models.nope"):
        with pytest.raises(ToolkitError) as e:
            load_object(f"{name}:{attr}", option="model")
        message = _one_line(e)
        # Catches: letting AttributeError through, including for the nested lookup.
        assert message.startswith(f"model='{name}:{attr}'")
        assert f"has no '{attr}'" in message


def test_load_object_default_option_name_is_spec():
    with pytest.raises(ToolkitError, match=r"^spec='nocolon' "):
        load_object("nocolon")


# --- spec_of ---------------------------------------------------------------------------------


def test_spec_of_a_top_level_function_round_trips_through_load_object(workdir):
    name = workdir(MODULE_SOURCE)
    module = _import(name)
    spec = spec_of(module.make)
    # Catches: recording `__name__` instead of `__qualname__`, or always python:.
    assert spec == f"{name}:make"
    assert load_object(spec) is module.make


def test_spec_of_a_method_and_a_nested_class_use_the_qualname(workdir):
    name = workdir(MODULE_SOURCE)
    module = _import(name)
    # Catches: `__name__` ("small", "Inner"), which does not import back.
    assert spec_of(module.Models.small) == f"{name}:Models.small"
    assert spec_of(module.Models.Inner) == f"{name}:Models.Inner"
    assert load_object(spec_of(module.Models.Inner)) is module.Models.Inner


def test_spec_of_a_lambda_and_a_nested_function_are_python_specs(workdir):
    name = workdir(MODULE_SOURCE)
    module = _import(name)
    # Catches: returning `module:qualname` unverified ("mod:<lambda>" can never be
    # imported: a resumed run would fail at build time instead of asking for the object).
    assert spec_of(module.shout) == PYTHON + "<lambda>"
    assert spec_of(module.outer()) == PYTHON + "outer.<locals>.inner"
    local = lambda x: x  # noqa: E731
    assert spec_of(local) == PYTHON + local.__qualname__
    assert local.__qualname__.endswith("<locals>.<lambda>")


def test_spec_of_a_rebound_name_is_a_python_spec(workdir):
    """The first `replaced` has module and qualname `mod:replaced`, but that path imports
    the second one: recording it would make a resumed run train another function."""
    name = workdir(MODULE_SOURCE)
    module = _import(name)
    assert module.old_replaced() == "old" and module.replaced() == "new"
    # Catches: dropping the `load_object(spec) is obj` identity check.
    assert spec_of(module.old_replaced) == PYTHON + "replaced"
    assert spec_of(module.replaced) == f"{name}:replaced"


def test_spec_of_an_object_of_main_is_a_python_spec(monkeypatch):
    """A script's `__main__` is another module in the process that resumes the run (or
    none), so `__main__:X` must never be recorded, even where it imports back here."""
    namespace: dict = {"__name__": "__main__"}
    exec("class Net:\n    pass\n\ndef factory():\n    return Net()\n", namespace)
    net, factory = namespace["Net"], namespace["factory"]
    assert net.__module__ == "__main__" and factory.__module__ == "__main__"
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "Net", net, raising=False)
    monkeypatch.setattr(main, "factory", factory, raising=False)
    # `__main__:Net` imports back to the identical object in this process, so only the
    # `module != "__main__"` check can catch this: removing it gives "__main__:Net".
    assert load_object("__main__:Net") is net
    assert spec_of(net) == PYTHON + "Net"
    assert spec_of(factory) == PYTHON + "factory"


def test_spec_of_an_instance_names_its_type_as_a_python_spec(workdir):
    name = workdir(MODULE_SOURCE)
    module = _import(name)
    # An instance has no `__qualname__`; `mod:Models` imports the class, not the instance.
    # Catches: a spec that imports the class (a resumed run would get a fresh object).
    assert spec_of(module.Models()) == PYTHON + "Models"
    assert spec_of(types.SimpleNamespace()) == PYTHON + "SimpleNamespace"


def test_spec_of_an_unimportable_module_is_a_python_spec():
    fn = types.FunctionType((lambda: 0).__code__, {"__name__": "_tk_specs_nowhere"}, "helper")
    fn.__qualname__ = "helper"
    assert fn.__module__ == "_tk_specs_nowhere"
    # Catches: returning `module:qualname` without trying to import it, or letting the
    # ToolkitError of the failed import escape.
    assert spec_of(fn) == PYTHON + "helper"
    assert "_tk_specs_nowhere" not in sys.modules


@pytest.mark.parametrize(
    "source, raised",
    [("def f(:\n", "SyntaxError"), ("raise RuntimeError('no GPU here')\n", "RuntimeError")],
)
def test_load_object_of_a_module_that_fails_on_import_is_one_line(
    tmp_path, monkeypatch, source, raised
):
    # Catches: an exception other than ImportError escaping as a traceback (a toolkit bug by
    # the CLI's rule: only ToolkitError is bad input).
    (tmp_path / "broken_user_mod.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(ToolkitError, match=f"--model=.*raised {raised}") as info:
            load_object("broken_user_mod:f", option="--model")
        assert "\n" not in str(info.value)
    finally:
        sys.modules.pop("broken_user_mod", None)
