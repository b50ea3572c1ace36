"""The compile cache behind ``optimize(..., cache_dir=...)``: where it lives and what its key holds.

An entry is an artifact directory named by the sha256 of everything that decides the compiled
result: the captured graph (weights included), the passes, the backend, the tolerance, the budget,
the verification inputs, this machine (CPU, features, threads, library versions: measurements pick
kernels and some kernels are exact only on some CPUs), the leangraph version and the artifact format.

A budget's ``evaluate`` is a callable, and its name says nothing about what it computes (two
lambdas share one ``__qualname__``). It enters the key by :func:`fingerprint`: its code, defaults,
closure and the globals it reads, recursively, when each of them is plain data (numbers, strings,
arrays, containers of them) or code; a callable that reads anything else (a tokenizer, a model, an
open file) has no stable fingerprint, and its budgeted results are not cached: the report says which
object prevented it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import sysconfig
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.cost_model.machine import machine_fingerprint
from leangraph.errors import OptionError
from leangraph.runtime.artifact import VERSION as ARTIFACT_VERSION
from leangraph.runtime.compiled import InputSpec, signature_inputs


def resolve_cache_dir(cache_dir: Any) -> Path:
    """``cache_dir`` as a usable folder: ``~`` and environment variables expanded, created if
    missing; an OptionError naming the path when it is not a folder leangraph can write in."""
    example = "pass a folder, e.g. cache_dir='~/.cache/leangraph'"
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise OptionError(f"cache_dir must be a path, got {type(cache_dir).__name__} {cache_dir!r}", hint=example)
    text = os.fspath(cache_dir)
    if not str(text).strip() or "\0" in str(text):
        raise OptionError(f"cache_dir {text!r} is empty or holds a NUL byte", hint=example)
    expanded = os.path.expandvars(os.path.expanduser(text))
    unset = UNEXPANDED.search(expanded)
    if unset:
        raise OptionError(f"cache_dir {text!r} names the environment variable {unset.group(0)}, which is not set",
                          hint=f"set it, or {example}")
    path = Path(expanded)
    if path.exists() and not path.is_dir():
        raise OptionError(f"cache_dir '{path}' is a file, not a folder", hint="pass a folder for the compile cache")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot create the cache folder '{path}': {exc.strerror or exc}",
                          hint="pass a folder you can write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OptionError(f"cache folder '{path}' is not writable", hint="pass a folder you can write to")
    return path


UNEXPANDED = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")
"""What os.path.expandvars leaves of a variable that is not set."""


def check_entry(compiled, graph: ir.Model, backend: str) -> str | None:
    """Why a loaded cache entry cannot be what this request asked for, or None. The cache folder
    is the user's, but an entry can be stale or replaced: another model's inputs or outputs,
    another backend."""
    if signature_inputs([InputSpec.of(v) for v in graph.graph.inputs]) != signature_inputs(compiled.inputs):
        return "its inputs are not the captured model's"
    if [v.name for v in graph.graph.outputs] != compiled.output_names:
        return "its outputs are not the captured model's"
    if compiled.backend != backend:
        return f"it was compiled for backend '{compiled.backend}', not '{backend}'"
    return None


class Unstable(Exception):
    """Raised inside :func:`fingerprint` for an object whose state cannot be read as data."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


_MAX_DEPTH = 12


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def _is_library(module_name: str | None) -> bool:
    """Whether a module is installed code (stdlib, site-packages, leangraph): named, not hashed."""
    if not module_name:
        return False
    if module_name.split(".")[0] in ("leangraph", "builtins") or module_name in sys.builtin_module_names:
        return True
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    return file is not None and os.path.realpath(file).startswith(_library_roots())


def _library_version(module_name: str) -> str:
    root = sys.modules.get(module_name.split(".")[0])
    return str(getattr(root, "__version__", ""))


class _Hasher:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.active: set[int] = set()

    def feed(self, tag: str, data: bytes = b"") -> None:
        self.digest.update(tag.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    def value(self, obj: Any, where: str, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise Unstable(f"{where} (nested too deeply)")
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.feed(type(obj).__name__, repr(obj).encode())
        elif isinstance(obj, (np.ndarray, np.generic)):
            array = np.ascontiguousarray(obj)
            if array.dtype.hasobject:
                raise Unstable(f"{where} (an object array)")
            self.feed("ndarray", repr((array.dtype.str, array.shape)).encode() + array.tobytes())
        elif type(obj).__module__.startswith("torch") and hasattr(obj, "detach") and hasattr(obj, "numpy"):
            if obj.device.type == "meta":
                raise Unstable(f"{where} (a meta tensor)")
            self.value(obj.detach().cpu().numpy(), where, depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset, dict)):
            if id(obj) in self.active:
                self.feed("cycle")
                return
            self.active.add(id(obj))
            self.feed(type(obj).__name__, str(len(obj)).encode())
            if isinstance(obj, dict):
                items = list(obj.items())
            elif isinstance(obj, (set, frozenset)):
                items = sorted(((repr(item), item) for item in obj), key=lambda pair: pair[0])
            else:
                items = list(enumerate(obj))
            for key, item in items:
                self.value(key, where, depth + 1)
                self.value(item, f"{where}[{key!r}]", depth + 1)
            self.active.discard(id(obj))
        elif isinstance(obj, types.ModuleType):
            self.feed("module", obj.__name__.encode())
        elif isinstance(obj, (types.FunctionType, types.MethodType, functools.partial, type,
                              types.BuiltinFunctionType)) or callable(obj):
            self.callable(obj, where, depth)
        else:
            raise Unstable(f"{where} (a {type(obj).__module__}.{type(obj).__qualname__})")

    def callable(self, fn: Any, where: str, depth: int) -> None:
        if isinstance(fn, functools.partial):
            self.feed("partial")
            self.value(fn.func, where, depth + 1)
            self.value(fn.args, f"{where} (partial args)", depth + 1)
            self.value(fn.keywords, f"{where} (partial keywords)", depth + 1)
        elif isinstance(fn, types.MethodType):
            self.feed("method")
            self.value(fn.__func__, where, depth + 1)
            self.value(fn.__self__, f"{where}.__self__", depth + 1)
        elif isinstance(fn, (type, types.BuiltinFunctionType)) or (
                isinstance(fn, types.FunctionType) and _is_library(getattr(fn, "__module__", None))):
            module = getattr(fn, "__module__", "") or ""
            self.feed("named", f"{module}.{getattr(fn, '__qualname__', repr(fn))}@{_library_version(module)}".encode())
        elif isinstance(fn, types.FunctionType):
            if id(fn) in self.active:  # a recursive function reads itself from its globals
                self.feed("recursion", fn.__qualname__.encode())
                return
            self.active.add(id(fn))
            self.feed("function", fn.__qualname__.encode())
            self.code(fn.__code__, fn, where, depth)
            self.value(fn.__defaults__, f"{where} (defaults)", depth + 1)
            self.value(fn.__kwdefaults__, f"{where} (keyword defaults)", depth + 1)
            for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
                try:
                    content = cell.cell_contents
                except ValueError:  # an empty cell: the closure variable is not bound yet
                    content = None
                self.value(content, f"'{name}' read by {fn.__qualname__}", depth + 1)
            self.active.discard(id(fn))
        else:  # an instance with __call__: its class's code and its own attributes
            call = getattr(type(fn), "__call__", None)
            if not isinstance(call, types.FunctionType):
                raise Unstable(f"{where} (a {type(fn).__qualname__})")
            self.feed("callable object", type(fn).__qualname__.encode())
            self.value(call, f"{where}.__call__", depth + 1)
            try:
                state = vars(fn)
            except TypeError:
                raise Unstable(f"{where} (a {type(fn).__qualname__} without __dict__)") from None
            self.value(state, f"{where} (attributes)", depth + 1)

    def code(self, code: types.CodeType, fn: types.FunctionType, where: str, depth: int) -> None:
        self.feed("code", code.co_code)
        self.feed("names", repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.code(const, fn, where, depth)
            else:
                self.value(const, where, depth + 1)
        for name in _global_names(code):
            if name in fn.__globals__:
                self.value(fn.__globals__[name], f"'{name}' read by {fn.__qualname__}", depth + 1)
            else:
                self.feed("builtin", name.encode())


def _global_names(code: types.CodeType) -> list[str]:
    """The names a code object (and the code nested in it) may read from its globals; attribute
    names are among co_names too, so this is a superset: reading more never makes a key unstable
    unless that global is unstable itself."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= set(_global_names(const))
    return sorted(names)


def fingerprint(obj: Any) -> tuple[str | None, str]:
    """(sha256 of ``obj``'s code and data, "") or (None, what has no stable fingerprint)."""
    hasher = _Hasher()
    try:
        hasher.value(obj, getattr(obj, "__qualname__", type(obj).__qualname__))
    except Unstable as exc:
        return None, exc.what
    except RecursionError:
        return None, "its data (nested too deeply)"
    return hasher.digest.hexdigest(), ""


def cache_key(graph: ir.Model, pipeline, backend: str, tolerance, input_sets, budget=()) -> str:
    """sha256 of everything a compiled model depends on (see the module docstring)."""
    import leangraph  # the version; a module-level import would be circular

    digest = hashlib.sha256()
    digest.update(ir.to_proto(graph).SerializeToString(deterministic=True))
    names = [getattr(item, "name", str(item)) + ":" + ",".join(p.name for p in getattr(item, "passes", ()))
             for item in pipeline]
    digest.update(repr((names, backend, tolerance, budget, leangraph.__version__, ARTIFACT_VERSION,
                        sorted(machine_fingerprint().items()))).encode())
    for inputs in input_sets:
        for array in inputs:
            digest.update(repr((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
