"""Objects named by import path: `package.module:attribute`.

A run records its model factory and its loss by name, so that another process (`toolkit
train --resume`, `toolkit bias`) can rebuild them. `spec_of(obj)` is that name when the
object can be imported again (defined at the top level of an importable module), and
`python:<qualname>` otherwise (a lambda, a closure, a class defined in `__main__`): such
a run is read back from Python by passing the object again.

`load_object(spec)` imports a spec with the current directory on `sys.path`, as a script
run from that directory would, so `--model mymodels:make` finds `./mymodels.py`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from toolkit.base._errors import ToolkitError

PYTHON = "python:"  # prefix of an object that was given in Python and cannot be imported
ARRAYS = PYTHON + "arrays"  # the data set of a run given (inputs, labels) arrays in Python


def is_import_spec(spec: str) -> bool:
    """Whether `spec` has the form `package.module:attribute` (not `python:...`)."""
    if not isinstance(spec, str) or spec.startswith(PYTHON) or spec.count(":") != 1:
        return False
    module, attr = spec.split(":")
    return all(p.isidentifier() for p in module.split(".")) and all(
        p.isidentifier() for p in attr.split(".")
    )


def load_object(spec: str, *, option: str = "spec") -> Any:
    """The object that `package.module:attribute` names; a one-line error otherwise."""
    if isinstance(spec, str) and spec.startswith(PYTHON):
        raise ToolkitError(
            f"{option}={spec!r} was given as a Python object when the run was made and has "
            "no import path; pass the object again (from Python)."
        )
    if not is_import_spec(spec):
        raise ToolkitError(f"{option}={spec!r} must have the form package.module:attribute.")
    module_name, attr = spec.split(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ToolkitError(
            f"{option}={spec!r}: cannot import module {module_name!r} ({e}); it must be "
            "installed or under the current directory."
        ) from None
    except Exception as e:  # the user's module failed while it was imported
        where = f" ({e.filename}:{e.lineno})" if isinstance(e, SyntaxError) else ""
        first = (str(e).splitlines() or [""])[0]
        raise ToolkitError(
            f"{option}={spec!r}: importing {module_name!r} raised {type(e).__name__}: "
            f"{first}{where}."
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ToolkitError(f"{option}={spec!r}: module {module_name!r} has no {attr!r}.")
        obj = getattr(obj, part)
    return obj


def spec_of(obj: Any) -> str:
    """`module:qualname` when importing it gives back `obj`, else `python:<qualname>`."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if module and module != "__main__" and "<" not in qualname:
        spec = f"{module}:{qualname}"
        try:
            if load_object(spec) is obj:
                return spec
        except ToolkitError:
            pass
    return PYTHON + qualname
