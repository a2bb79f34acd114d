"""Which globals a torch pickle may name: torch's safe list, plus names the caller allows.

A pickle names a global as ``module.name``; torch's ``weights_only`` unpickler looks that
string up in its safe list and in the globals allowed for the load. Allowing a name is the
caller's decision, but the name itself usually comes from the file (it is in the refusal
message), so it is checked before anything is imported or allowed:

- it must be an object's *own* name: the object it resolves to has ``__module__`` and
  ``__qualname__`` spelling exactly that name. ``argparse._os.system`` reaches ``os.system``
  through another module's attribute and is refused; a crafted name cannot smuggle in another
  object;
- it must not be, or lead to, code that runs commands, loads code or files, or calls
  attributes by name (:data:`DENIED_MODULES`, :data:`DENIED_NAMES`, every ``builtins`` name
  outside :data:`SAFE_BUILTINS`), whatever name reaches it;
- it must be a class or a function, not a module or another object.

These checks are static where they can be (a name in a denied module is refused without being
imported). Allowing a name still imports its module, which runs that module's import-time
code: allow only names whose module you know.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

from ..errors import CheckpointError

__all__ = [
    "DENIED_MODULES",
    "DENIED_NAMES",
    "SAFE_BUILTINS",
    "denial",
    "imported_denial",
    "resolve_allowed",
    "split_wanted",
    "torch_safe_names",
]

#: An importable ``module.Name``, ASCII only (no look-alike letters, no control characters).
GLOBAL_NAME = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)+[A-Za-z_][A-Za-z0-9_]*")

#: Modules (and their submodules) whose contents run commands, load code or files, reach
#: other objects by name, or decode with a caller-chosen codec. Never allowed.
DENIED_MODULES = frozenset((
    "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "pty", "shutil", "signal",
    "socket", "_socket", "select", "selectors", "ssl", "multiprocessing", "_multiprocessing",
    "concurrent", "asyncio", "threading", "_thread", "importlib", "imp", "runpy", "pkgutil",
    "zipimport", "site", "sysconfig", "ensurepip", "venv", "code", "codeop", "compileall",
    "py_compile", "inspect", "gc", "pickle", "_pickle", "pickletools", "copyreg", "copy",
    "shelve", "marshal", "dbm", "ctypes", "_ctypes", "cffi", "functools", "_functools",
    "operator", "_operator", "codecs", "_codecs", "encodings", "io", "_io", "tempfile", "pathlib",
    "glob", "fileinput", "webbrowser", "urllib", "http", "ftplib", "smtplib", "poplib", "imaplib",
    "telnetlib", "xmlrpc", "socketserver", "wsgiref", "pdb", "bdb", "trace", "tracemalloc",
    "profile", "cProfile", "timeit", "doctest", "unittest", "__main__", "__builtin__", "platform",
    "sched", "numpy.testing", "numpy.lib.format", "numpy.lib.npyio", "numpy.f2py",
    "numpy.distutils", "numpy.ctypeslib", "torch.hub", "torch.jit", "torch.package",
    "torch.utils.cpp_extension", "torch.serialization", "torch.ops", "torch._ops",
    "torch._dynamo", "torch._inductor", "torch.compiler", "torch.fx", "torch.distributed",
    "torch.multiprocessing", "torch.utils.data", "torch._C",
))  # fmt: skip
#: Names whose last part says what they do: run, call, load or look up by name.
DENIED_NAMES = frozenset((
    "system", "popen", "spawn", "spawnl", "spawnv", "exec", "execfile", "eval", "compile", "open",
    "run", "call", "check_call", "check_output", "load", "loads", "load_module", "import_module",
    "__import__", "getattr", "setattr", "delattr", "attrgetter", "itemgetter", "methodcaller",
    "partial", "reduce", "apply", "runstring", "runpy", "run_path", "run_module", "globals",
    "locals", "vars", "breakpoint", "input", "help",
))  # fmt: skip
#: ``builtins`` names that only build plain data; every other builtin is refused.
SAFE_BUILTINS = frozenset(
    ["bool", "bytearray", "complex", "float", "frozenset", "int", "set", "slice"]
)


def torch_safe_names() -> frozenset[str]:
    """The globals torch's ``weights_only`` unpickler allows by default, by name."""
    from torch import _weights_only_unpickler as unpickler  # private, but the source of truth

    return frozenset(unpickler._get_allowed_globals())


def denial(name: str) -> str | None:
    """Why ``name`` can never be allowed, from the name alone (nothing is imported), or None."""
    if not GLOBAL_NAME.fullmatch(name):
        return "not a module.Name"
    module, _, last = name.rpartition(".")
    if module == "builtins":
        return None if last in SAFE_BUILTINS else "a builtin that is not plain data"
    if _denied_module(module):
        return f"module {module} can run commands, load code or reach objects by name"
    if last in DENIED_NAMES:
        return f"'{last}' runs, loads or looks up code by name"
    return None


def resolve_allowed(names: Iterable[str]) -> dict[str, Any]:
    """``{name: object}`` for the globals a caller allows, each checked as the module says.

    Raises:
        CheckpointError: a name that is denied, cannot be imported, or is not the object's
            own name (named in the message, escaped).
    """
    resolved = {}
    for name in names:
        if not isinstance(name, str):
            raise CheckpointError(f"cannot allow global {name!a}: not a string")
        reason = denial(name)
        if reason is not None:
            raise CheckpointError(f"cannot allow global {name!a}: {reason}")
        obj = _import(name)
        problem = _object_problem(name, obj)
        if problem is not None:
            raise CheckpointError(f"cannot allow global {name!a}: {problem}")
        resolved[name] = obj
    return resolved


def imported_denial(name: str) -> str | None:
    """Why ``name`` cannot be allowed, using only modules already imported; None if it may be.

    For refusal messages: a name from a file must not make this process import anything.
    """
    reason = denial(name)
    if reason is not None:
        return reason
    for module, qualname in _splits(name):
        if module in sys.modules:
            try:
                obj = _walk(sys.modules[module], qualname, lazy=False)
            except (AttributeError, KeyError):
                return None  # absent today; allowing it would fail with its own message
            return _object_problem(name, obj)
    return None


# ---- helpers ----------------------------------------------------------------------------

#: Modules a library renamed, whose old name stays importable and is written in older pickles
#: (numpy 1.x pickles name numpy.core.multiarray._reconstruct; numpy 2 defines it in
#: numpy._core). A name under the old module is its object's own name under the new one.
_RENAMED_MODULES = {"numpy.core": "numpy._core"}


def _renamed(name: str) -> str:
    for old, new in _RENAMED_MODULES.items():
        if name.startswith(old + "."):
            return new + name[len(old) :]
    return name


def _denied_module(module: str) -> bool:
    parts = module.split(".")
    return any(".".join(parts[:cut]) in DENIED_MODULES for cut in range(1, len(parts) + 1))


def _splits(name: str) -> list[tuple[str, str]]:
    """``(module, qualname)`` candidates, the longest module first ("pkg.mod.Outer.Inner")."""
    parts = name.split(".")
    return [(".".join(parts[:cut]), ".".join(parts[cut:])) for cut in range(len(parts) - 1, 0, -1)]


def _walk(obj: Any, qualname: str, lazy: bool = True) -> Any:
    """``obj.<qualname>``; with ``lazy=False``, a module's attributes are only looked up in
    its namespace (a module ``__getattr__`` may import more on access)."""
    for attribute in qualname.split("."):
        obj = (
            getattr(obj, attribute)
            if lazy or not isinstance(obj, ModuleType)
            else vars(obj)[attribute]
        )
    return obj


def _import(name: str) -> Any:
    for module, qualname in _splits(name):
        try:
            base = importlib.import_module(module)
        except ImportError:
            continue
        except Exception as exc:  # a module that fails while importing
            raise CheckpointError(
                f"cannot allow global {name!a}: importing {module!a} failed ({type(exc).__name__})"
            ) from None
        try:
            return _walk(base, qualname)
        except AttributeError:
            break
    raise CheckpointError(
        f"cannot allow global {name!a}: no importable module.attribute by that name"
    )


def _object_problem(name: str, obj: Any) -> str | None:
    """Why ``obj`` (reached by ``name``) must not be allowed, or None."""
    if not isinstance(obj, type) and not callable(obj):
        return "neither a class nor a function"
    own = f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', None)}"
    if own != name and own != _renamed(name):
        # The object was reached through attributes of another module or object: allowing
        # the name would hand out whatever the attribute holds today (os.system, say).
        return f"it is {own!a}, reached by another name; only an object's own name can be allowed"
    for cls in obj.__mro__ if isinstance(obj, type) else (obj,):
        module = getattr(cls, "__module__", None) or ""
        if module == "builtins":
            if cls in (type, super):  # a metaclass or super() builds classes from file data
                return f"builds on builtins.{cls.__qualname__}"
        elif _denied_module(module):
            return f"comes from module {module}, which can run commands or load code"
    return None


def split_wanted(wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split refused names into those a caller could allow and those never allowed."""
    allowable, never = [], []
    for name in wanted:
        (never if imported_denial(name) else allowable).append(name)
    return allowable, never
