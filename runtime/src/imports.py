"""rpar-engine's import machinery: hooks run after a module is imported, lazy packages, and
SIGINT held while the engine itself imports.

Loaded into every rank's interpreter as module ``_rpar_imports``, before ``_rpar_engine``
(support.py), which builds the shell and serves requests with it.
"""

import sys
import traceback


class _AfterImport:
    """A ``sys.meta_path`` entry that calls ``hook(module)`` once a watched module has run."""

    def __init__(self):
        self.hooks = {}

    def find_spec(self, name, path=None, target=None):
        hook = self.hooks.get(name)
        if hook is None:
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        del self.hooks[name]
        spec.loader = _HookedLoader(loader, hook)
        return spec


class _HookedLoader:
    def __init__(self, loader, hook):
        self.loader = loader
        self.hook = hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # the module keeps its own loader
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        try:
            self.hook(module)
        except Exception:
            traceback.print_exc()

    def __getattr__(self, name):
        return getattr(self.loader, name)


_after = _AfterImport()


def after_import(name, hook):
    """Call ``hook(module)`` once module ``name`` is imported (now, if it already is)."""
    mod = sys.modules.get(name)
    if mod is not None and not initializing(name):
        hook(mod)
        return
    _after.hooks[name] = hook
    if _after not in sys.meta_path:
        sys.meta_path.insert(0, _after)


def initializing(name):
    mod = sys.modules.get(name)
    return mod is not None and bool(getattr(getattr(mod, "__spec__", None), "_initializing", False))


# Packages whose __init__ imports far more than an apply request needs: ipyparallel's pulls in
# the client, the cluster launchers and IPython; jupyter_client's its kernel managers. They are
# put in sys.modules unexecuted, so ipyparallel.serialize loads with only what it imports; the
# first access to anything else of the package (ipp.Client, jupyter_client.__version__, ...), or
# a shipped function whose globals are the package's, runs the real __init__ in place.
LAZY_PACKAGES = ("ipyparallel", "jupyter_client", "traitlets")
# What the serializer takes from a lazy package itself, read from the light submodule that
# defines it: ipyparallel's canning imports only import_item from traitlets, whose __init__
# loads all of traitlets.traitlets (about 0.7 MiB a rank).
LAZY_VALUES = {"traitlets": {"import_item": "traitlets.utils.importstring"}}
_lazy = {}


def lazy_package(name):
    if name in sys.modules:
        return
    import importlib
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return
    if spec is None or spec.submodule_search_locations is None or not hasattr(spec.loader, "exec_module"):
        return

    values = LAZY_VALUES.get(name, {})

    def first(attr):
        # a value of LAZY_VALUES is read from its submodule (if that fails, the real package
        # runs and has it); a submodule (`from ipyparallel import error`) is imported, as the
        # package would have
        if attr in values:
            try:
                return getattr(importlib.import_module(values[attr]), attr)
            except Exception:
                return None
        if attr.startswith("__"):
            return None
        try:
            sub = importlib.util.find_spec(f"{name}.{attr}")
        except (ImportError, ValueError):
            sub = None
        return importlib.import_module(f"{name}.{attr}") if sub is not None else None

    _install_lazy(spec, {}, first)


def _install_lazy(spec, values, first=lambda attr: None):
    """Put module `spec.name` in sys.modules unexecuted, holding `values`; asking it for anything
    else (`first(attr)` aside, when that gives something) runs its code in place ([`complete`])."""
    import importlib.util

    name = spec.name
    mod = importlib.util.module_from_spec(spec)
    mod.__dict__.update(values)

    def __getattr__(attr):
        got = first(attr)
        if got is not None:
            return got
        # the import system asks a module for __path__ (is it a package?) in `from m import x`
        if attr != "__path__":
            complete(mod)
        try:
            return mod.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    mod.__getattr__ = __getattr__
    _lazy[name] = mod
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, mod)


# Modules the serializer imports only for a few integer constants: jupyter_client.session (for
# MAX_ITEMS and MAX_BYTES) costs 60 ms of CPU per engine start (zmq, tornado, traitlets, dateutil),
# most of what an apply request's first import costs. It is put in sys.modules unexecuted, holding
# just those constants, read from its own source (an installed version that defines them some
# other way is imported as it is); anything else of it runs the real module in place.
LAZY_CONSTANTS = {"jupyter_client.session": ("MAX_ITEMS", "MAX_BYTES")}


def lazy_constants(name, names):
    if name in sys.modules:
        return
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec(name)
        source = spec.loader.get_source(name) if spec is not None else None
    except (ImportError, ValueError, AttributeError, OSError):
        return
    if source is None or not hasattr(spec.loader, "exec_module"):
        return
    values = {}
    for n in names:
        found = re.findall(rf"^{n}\s*=\s*(\d+)\s*$", source, re.MULTILINE)
        if len(found) != 1:
            return
        values[n] = int(found[0])
    _install_lazy(spec, values)


def lazy_packages():
    for name in LAZY_PACKAGES:
        lazy_package(name)
    for name, names in LAZY_CONSTANTS.items():
        lazy_constants(name, names)


def complete(mod):
    """Run a lazy package's real __init__, or a lazy module's code (once)."""
    if _lazy.pop(mod.__name__, None) is None:
        return
    mod.__dict__.pop("__getattr__", None)
    mod.__spec__._initializing = True
    held = hold_interrupts()
    try:
        mod.__spec__.loader.exec_module(mod)
    finally:
        mod.__spec__._initializing = False
        held()


def complete_for(f):
    """Complete the lazy package whose namespace `f` (a shipped function) runs in."""
    g = getattr(f, "__globals__", None)
    if g is not None and _lazy:
        for mod in list(_lazy.values()):
            if mod.__dict__ is g:
                complete(mod)


_interrupt_pending = False


def _note_interrupt(signum, frame):
    global _interrupt_pending
    _interrupt_pending = True


def hold_interrupts():
    """Keep SIGINT (signal_request) from breaking the engine's own imports half-way (the shell's
    build, lazy packages, the serializer): it is noted instead, and the request it was meant for
    raises KeyboardInterrupt before its code runs ([`check_interrupt`]). Returns the function
    that restores the handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.getsignal(signal.SIGINT)
    if old is _note_interrupt:
        return lambda: None
    signal.signal(signal.SIGINT, _note_interrupt)
    return lambda: signal.signal(signal.SIGINT, old)


def check_interrupt():
    global _interrupt_pending
    if _interrupt_pending:
        _interrupt_pending = False
        raise KeyboardInterrupt


_deferred = False


def defer_can_map():
    """ipyparallel's canning table names some types by import string ('numpy.ndarray',
    'ipyparallel.dependent'), and the first ``can()`` imports them all: numpy, and ipyparallel's
    client with IPython. An object of such a type exists only once its module is imported, so
    each entry is added back, as the type, when its module is imported."""
    global _deferred
    if _deferred:
        return
    _deferred = True
    try:
        from ipyparallel.serialize import canning
    except Exception:
        return
    for key, canner in list(canning.can_map.items()):
        if not isinstance(key, str) or "." not in key:
            continue
        modname, _, attr = key.rpartition(".")
        if modname in sys.modules and not _lazy.get(modname):
            continue
        if key == "ipyparallel.dependent":
            # where ipyparallel defines it (the package only re-exports it)
            modname = "ipyparallel.controller.dependency"
        del canning.can_map[key]

        def add(module, attr=attr, canner=canner):
            canning.can_map[getattr(module, attr)] = canner

        after_import(modname, add)
