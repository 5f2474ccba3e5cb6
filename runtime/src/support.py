"""rpar-engine's Python side: the user namespace, the shell, and the request handlers.

Loaded into the embedded interpreter of every rank as module ``_rpar_engine``. The Rust side calls
``setup``, then ``execute`` / ``apply`` / ``clear`` once per request, on the main thread, one at a
time. IOPub side effects (execute_input, execute_result, display_data, error, data_message) go
through the ``publisher`` object Rust passes in. Replies are returned to Rust as JSON text (plus
buffers for apply).

The shell is what engine-side code expects of an ipengine's: ``get_ipython()`` and
``ZMQInteractiveShell.instance()`` return it; it has ``kernel``, ``data_pub``, ``display_pub`` and
``displayhook``. It is built when something needs it (an execute_request, start-up code, an import
of IPython, ipykernel's shell or ipyparallel's engine app), not at start: apply requests only need
ipyparallel's serializer, and an engine that only runs apply never pays for IPython's start-up.

Between requests the engine's asyncio event loop runs while it has work (a dask Worker, a bound
kernel, any task engine code scheduled): Rust asks ``loop_busy()`` after each request and, if so,
calls ``run_loop``, which runs the loop and hands each arriving request back to Rust. The loop is
made when asyncio is first imported (by engine code, the shell, dask), not before: an engine that
only runs apply requests does not pay for asyncio (about 3.5 MiB a rank).
"""

import ast
import json
import os
import sys
import traceback

import _rpar_imports as imports

_pub = None
_shell = None
_shell_failed = False
_building = False
_main = None
_ns = None
_config = {}
_engine = {}
_loop = None
# the bound kernel (bind_kernel), when one is running: it takes IOPub output of its requests
_sink = None


def _json_default(o):
    if isinstance(o, (bytes, bytearray)):
        import base64

        return base64.b64encode(bytes(o)).decode("ascii")
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return repr(o)


# what json.dumps(obj, default=..., ensure_ascii=False, allow_nan=False) builds on every call
_encoder = json.JSONEncoder(default=_json_default, ensure_ascii=False, allow_nan=False)


def _json(obj):
    return _encoder.encode(obj)


# the content of most replies
_OK = _json({"status": "ok"})


def _flush_std():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass


def _publish(kind, msg_type, content):
    _flush_std()
    if _sink is not None:
        _sink(msg_type, content)
        return
    try:
        text = _json(content)
    except ValueError:
        text = json.dumps(json.loads(json.dumps(content, default=repr)), default=repr)
    _pub.publish(kind, msg_type, text)


# ------------------------------------------------------------------------------ the shell


class EngineKernel:
    """What engine-side code finds at ``get_ipython().kernel`` (an ipengine's kernel object):
    the engine's ids, a logger, the event loop, and the slot a dask Worker is kept in."""

    def __init__(self, shell):
        import logging

        self.shell = shell
        self.engine_id = self.int_id = _engine.get("engine_id")
        self.ident = _engine.get("engine_uuid")
        self.log = logging.getLogger("rpar-engine")
        self.distributed_worker = None
        self.eventloop = None
        self.session = None

    @property
    def user_ns(self):
        return _ns

    @property
    def io_loop(self):
        from tornado.ioloop import IOLoop

        _event_loop()
        return IOLoop.current()


class _DataPub:
    """``shell.data_pub``: ``publish_data(dict)`` sends a ``data_message`` on IOPub (topic
    ``datapub``, content ``{"keys": [...]}``, the dict serialized as ipyparallel's buffers), with
    the running request as parent; the client merges it into ``AsyncResult.data``."""

    topic = b"datapub"

    def set_parent(self, parent):
        pass

    def publish_data(self, data):
        from ipyparallel.serialize import serialize_object

        # bytes and memoryviews: the engine copies each once into its frame (as apply's)
        bufs = list(serialize_object(data, buffer_threshold=1024, item_threshold=64))
        _flush_std()
        _pub.publish_data(_json({"keys": list(data.keys())}), bufs)


def _make_ipython_shell():
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from traitlets import Type
    from traitlets.config import Config

    try:
        from ipykernel.zmqshell import ZMQInteractiveShell as Base
    except ImportError:
        from IPython.core.interactiveshell import InteractiveShell as Base

    class EngineDisplayHook(DisplayHook):
        """execute_result on IOPub instead of an Out[] prompt on stdout."""

        topic = b"execute_result"

        def set_parent(self, parent):
            pass

        def start_displayhook(self):
            self._rpar = {"data": {}, "metadata": {}}

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            self._rpar = {"data": format_dict, "metadata": md_dict or {}}

        def finish_displayhook(self):
            content = dict(self._rpar, execution_count=self.prompt_count)
            if content["data"]:
                _publish("execute_result", "execute_result", content)

    class EngineDisplayPublisher(DisplayPublisher):
        """display() → display_data / update_display_data on IOPub."""

        topic = b"displaypub"

        def set_parent(self, parent):
            pass

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
            content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
            _publish("displaypub", "update_display_data" if update else "display_data", content)

        def clear_output(self, wait=False):
            _publish("clear_output", "clear_output", {"wait": wait})

    class EngineShell(Base):
        displayhook_class = Type(EngineDisplayHook)
        display_pub_class = Type(EngineDisplayPublisher)

        def _showtraceback(self, etype, evalue, stb):
            self._last_traceback = stb
            _publish(
                "error",
                "error",
                {"ename": getattr(etype, "__name__", str(etype)), "evalue": str(evalue), "traceback": stb},
            )

        def init_io(self):
            pass

        def enable_gui(self, gui=None):
            pass

    cfg = Config(json.loads(json.dumps(_config)))
    # Many engines share one profile: no history database (sqlite locks under N writers),
    # unless the configuration asks for one.
    if "enabled" not in cfg.HistoryManager:
        cfg.HistoryManager.enabled = False
    if "hist_file" not in cfg.HistoryManager:
        cfg.HistoryManager.hist_file = ":memory:"
    shell = EngineShell.instance(config=cfg, user_module=_main)
    shell._last_traceback = None
    shell.kernel = EngineKernel(shell)
    shell.data_pub = _DataPub()
    return shell


class _PlainShell:
    """The namespace and execution rules of IPython, minus IPython (when it is not installed)."""

    def __init__(self):
        import builtins

        self.user_module = _main
        self.user_ns = _ns
        self.user_ns["__builtins__"] = builtins
        self.user_global_ns = self.user_ns
        self.execution_count = 1
        self._last_traceback = None
        self.kernel = EngineKernel(self)
        self.data_pub = _DataPub()

    def showtraceback(self):
        etype, evalue, tb = sys.exc_info()
        stb = traceback.format_exception(etype, evalue, tb)
        self._last_traceback = stb
        _publish("error", "error", {"ename": etype.__name__, "evalue": str(evalue), "traceback": stb})

    def run_cell(self, code, store_history=False, silent=False):
        class R:
            error_before_exec = None
            error_in_exec = None

        r = R()
        try:
            tree = ast.parse(code, "<cell>", "exec")
        except SyntaxError as e:
            r.error_before_exec = e
            self.showtraceback()
            return r
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not silent:
            last = ast.Expression(tree.body.pop().value)
        try:
            exec(compile(tree, "<cell>", "exec"), self.user_ns)
            if last is not None:
                value = eval(compile(last, "<cell>", "eval"), self.user_ns)
                if value is not None:
                    self.user_ns["_"] = value
                    _publish(
                        "execute_result",
                        "execute_result",
                        {
                            "data": {"text/plain": repr(value)},
                            "metadata": {},
                            "execution_count": self.execution_count,
                        },
                    )
        except BaseException as e:
            r.error_in_exec = e
            self.showtraceback()
        if store_history:
            self.execution_count += 1
        return r

    def user_expressions(self, expressions):
        out = {}
        for k, expr in expressions.items():
            try:
                out[k] = {"status": "ok", "data": {"text/plain": repr(eval(expr, self.user_ns))}, "metadata": {}}
            except Exception as e:
                out[k] = {"status": "error", "ename": type(e).__name__, "evalue": str(e), "traceback": []}
        return out

    def reset(self, new_session=True):
        _reset_ns()


def _reset_ns():
    keep = {k: _ns[k] for k in ("__builtins__", "__name__", "get_ipython") if k in _ns}
    _ns.clear()
    _ns.update(keep)


def shell():
    """The shell, built now if it is not yet."""
    global _shell, _shell_failed, _building, _want_shell
    if _shell is not None:
        return _shell
    _building = True
    held = imports.hold_interrupts()
    try:
        if not _shell_failed:
            try:
                _shell = _make_ipython_shell()
            except ImportError:
                import importlib.util

                if importlib.util.find_spec("IPython") is not None:
                    raise
                _shell_failed = True
        if _shell is None:
            _shell = _PlainShell()
    finally:
        _building = False
        held()
    _want_shell = False
    _event_loop()
    _load_extensions()
    return _shell


_want_shell = False


def _shell_soon(module=None):
    """Build the shell now, unless an import is under way (the shell's own imports could meet
    a half-imported module): then at the next request boundary."""
    global _want_shell
    if _shell is not None or _building:
        return
    this = getattr(module, "__name__", None)
    for name, m in list(sys.modules.items()):
        if name != this and getattr(getattr(m, "__spec__", None), "_initializing", False):
            _want_shell = True
            return
    shell()


def _lazy_get_ipython():
    """``get_ipython`` in the namespace before the shell exists; the shell replaces it."""
    return shell()


def _install_ipengine(module):
    """Once ipyparallel's engine app is imported, make ``IPEngine.instance()`` this engine, so
    ``ipyparallel.bind_kernel()`` finds an engine to bind."""
    base = module.IPEngine

    class RparEngine(base):
        def bind_kernel(self, **kwargs):
            from _rpar_bound_kernel import bind_kernel

            return bind_kernel(shell(), _engine, _event_loop(), **kwargs)

    if not base.initialized():
        app = RparEngine()
        for cls in RparEngine.mro():
            if hasattr(cls, "_instance"):
                cls._instance = app
    _shell_soon()


def setup(publisher, engine_id, engine_uuid, config_json, profile_dir, eager):
    """Create the user namespace (the shell follows when needed). Returns what runs."""
    global _pub, _main, _ns, _config
    import types

    _pub = publisher
    _engine.update(engine_id=engine_id, engine_uuid=engine_uuid, profile_dir=profile_dir)
    _config = json.loads(config_json or "{}")
    # signal_request(SIGINT) interrupts running code (mpiexec may start us with SIGINT ignored)
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    import builtins

    _main = types.ModuleType("__main__")
    _ns = _main.__dict__
    _ns["__builtins__"] = builtins
    _ns["get_ipython"] = _lazy_get_ipython
    sys.modules["__main__"] = _main
    imports.lazy_packages()
    for name in ("IPython", "ipykernel.zmqshell"):
        imports.after_import(name, _shell_soon)
    imports.after_import("ipyparallel.engine.app", _install_ipengine)
    imports.after_import("asyncio", _asyncio_imported)
    if eager or _startup_files():
        return "IPython" if not isinstance(shell(), _PlainShell) else "plain"
    return "lazy"


def _section(key):
    """A start-up trait, from IPKernelApp or else InteractiveShellApp (as ipengine reads it)."""
    for app in ("IPKernelApp", "InteractiveShellApp"):
        sec = _config.get(app) or {}
        if key in sec:
            return list(sec[key] or [])
    return []


def _startup_files():
    """The profile's startup/*.py and *.ipy, and $PYTHONSTARTUP, as IPython runs them."""
    out = []
    env = os.environ.get("PYTHONSTARTUP")
    if env and os.path.isfile(env):
        out.append(env)
    d = os.path.join(_engine.get("profile_dir") or "", "startup")
    if os.path.isdir(d):
        out += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith((".py", ".ipy")))
    return out


def _load_extensions():
    if not hasattr(_shell, "extension_manager"):
        return
    for ext in _section("extensions"):
        try:
            _shell.extension_manager.load_extension(ext)
        except Exception:
            traceback.print_exc()


def run_startup(script, command):
    """What ipengine runs at start, in its order: the profile's startup files, exec_lines (and
    IPEngine.startup_command), exec_files (and IPEngine.startup_script). A failure raises."""
    lines = _section("exec_lines") + ([command] if command else [])
    files = _section("exec_files") + ([script] if script else [])
    files = _startup_files() + files
    if not (lines or files):
        return
    sh = shell()
    for path in files:
        if path.endswith(".ipy") and hasattr(sh, "safe_execfile_ipy"):
            sh.safe_execfile_ipy(path, raise_exceptions=True)
            continue
        with open(path) as f:
            code = f.read()
        exec(compile(code, path, "exec"), sh.user_ns)
    for line in lines:
        if hasattr(sh, "input_transformer_manager"):
            res = sh.run_cell(line, store_history=False)
            err = res.error_before_exec or res.error_in_exec
            if err is not None:
                raise err
        else:
            exec(compile(line, "<startup_command>", "exec"), sh.user_ns)


def _error_content(e):
    try:
        evalue = str(e)
    except Exception as err:
        evalue = f"Failed to cast exception to string: {err}"
    return {
        "status": "error",
        "ename": type(e).__name__,
        "evalue": evalue,
        "traceback": getattr(_shell, "_last_traceback", None) or [],
    }


def execute(code, silent, store_history, user_expressions_json):
    try:
        sh = shell()
        imports.check_interrupt()
    except KeyboardInterrupt as e:
        content = _error_content(e)
        content.update(execution_count=0, user_expressions={}, payload=[])
        return _json(content)
    _event_loop()
    if not silent:
        _publish("execute_input", "execute_input", {"code": code, "execution_count": sh.execution_count})
    sh._last_traceback = None
    res = sh.run_cell(code, store_history=store_history, silent=silent)
    err = res.error_before_exec or res.error_in_exec
    if err is not None:
        content = _error_content(err)
    else:
        content = {"status": "ok"}
    content["execution_count"] = sh.execution_count - 1
    exprs = json.loads(user_expressions_json or "{}")
    if content["status"] == "ok" and exprs:
        content["user_expressions"] = sh.user_expressions(exprs)
    else:
        content["user_expressions"] = {}
    content["payload"] = []
    sh._last_traceback = None
    return _json(content)


def warm():
    """Import what apply requests need (ipyparallel's serialization) once the engine is up,
    instead of inside the first task. A missing ipyparallel is reported by apply."""
    held = imports.hold_interrupts()
    try:
        import ipyparallel.serialize  # noqa: F401

        imports.defer_can_map()
        _loop_if_used()
    except Exception:
        pass
    finally:
        held()


class PythonVersionMismatch(RuntimeError):
    """The client pickled code objects with another Python minor version than the engine's."""


# number of types.CodeType constructor fields -> the Python versions that pickle that many
_CODE_FIELDS = {15: "3.7 or earlier", 16: "3.8 to 3.10", 18: "3.11 or later"}


def _foreign_code(e):
    """If `e` was raised while rebuilding a pickled code object, a PythonVersionMismatch that
    names both Pythons; else None."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "code_ctor":
            n = len(tb.tb_frame.f_locals.get("args", ()))
            here = sys.version.split()[0]
            theirs = _CODE_FIELDS.get(n, "unknown")
            return PythonVersionMismatch(
                f"the client's function cannot be rebuilt on this engine: its code object was "
                f"pickled by Python {theirs} ({n} code fields), this engine runs Python {here} "
                f"({sys.executable}); code objects only load in the Python minor version that "
                f"pickled them ({type(e).__name__}: {e}). Run the client with Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}, or rebuild rpar-engine with the "
                f"client's Python first on PATH."
            )
        tb = tb.tb_next
    return None


def _showtraceback():
    if _shell is not None:
        _shell.showtraceback()
        return
    etype, evalue, tb = sys.exc_info()
    stb = traceback.format_exception(etype, evalue, tb)
    _publish("error", "error", {"ename": etype.__name__, "evalue": str(evalue), "traceback": stb})
    return stb


# (serialize_object, unpack_apply_message), imported by the first apply request
_serializer = None


def apply(bufs):
    """apply_request: f(*args, **kwargs) with ipyparallel's own serialization."""
    global _serializer
    if _serializer is None:
        from ipyparallel.serialize import serialize_object, unpack_apply_message

        _serializer = (serialize_object, unpack_apply_message)
        imports.defer_can_map()
    serialize_object, unpack_apply_message = _serializer
    if _shell is not None:
        _shell._last_traceback = None
    _loop_if_used()
    try:
        try:
            f, args, kwargs = unpack_apply_message(bufs, _ns, copy=False)
        except Exception as e:
            mismatch = _foreign_code(e)
            if mismatch is not None:
                raise mismatch from None
            raise
        imports.complete_for(f)
        if _want_shell or ("IPython" in sys.modules and _shell is None):
            _shell_soon()
        imports.check_interrupt()
        result = f(*args, **kwargs)
        # bytes and memoryviews (of arrays too): the engine copies each once into its frame
        out = list(serialize_object(result, buffer_threshold=1024, item_threshold=64))
        return _OK, out
    except BaseException as e:
        stb = None
        try:
            stb = _showtraceback()
        except Exception:
            pass
        content = _error_content(e)
        if stb and not content["traceback"]:
            content["traceback"] = stb
        if _shell is not None:
            _shell._last_traceback = None
        return _json(content), []


def clear():
    if _shell is not None:
        _shell.reset(False)
    else:
        _reset_ns()
    return _OK


# ---------------------------------------------------------------------------- event loop


def _event_loop():
    """This thread's asyncio loop (created once, and current again if engine code replaced it,
    as ``asyncio.run`` does)."""
    global _loop, _asyncio
    if _loop is None:
        import asyncio

        _asyncio = asyncio
        _loop = asyncio.new_event_loop()
    if _asyncio._get_running_loop() is None and not _is_current(_loop):
        _asyncio.set_event_loop(_loop)
    return _loop


# asyncio, imported with the loop
_asyncio = None


def _loop_if_used():
    """The loop made current again before a request, once asyncio is imported (engine code
    that never imports it never gets one, and the engine does not import it for them)."""
    if _loop is not None or "asyncio" in sys.modules:
        _event_loop()


def _asyncio_imported(module):
    """asyncio was just imported: make the loop now, so that the importing code's own
    ``asyncio.get_event_loop()`` finds it (from another thread: at the next request)."""
    import threading

    if threading.current_thread() is threading.main_thread():
        _event_loop()


def _is_current(loop):
    """Is `loop` already this thread's event loop (the default policy's record of it)? Setting
    it again on every request re-attached the child watcher each time."""
    local = getattr(_asyncio.get_event_loop_policy(), "_local", None)
    return local is not None and getattr(local, "_loop", None) is loop


def _no_tasks():
    """Certainly no asyncio task exists (Python 3.12 and older register every task in
    ``asyncio.tasks._all_tasks``, 3.12's eager ones in ``_eager_tasks``, which is what
    ``all_tasks()`` reads): the test after each request, without building the set of them."""
    if sys.version_info >= (3, 13):
        return False
    tasks = _asyncio.tasks
    return not getattr(tasks, "_all_tasks", True) and not getattr(tasks, "_eager_tasks", None)


def loop_busy():
    """Does the event loop have work (tasks, timers, callbacks) to run between requests?"""
    loop = _loop
    if loop is None or loop.is_closed():
        return False
    if getattr(loop, "_ready", None) or getattr(loop, "_scheduled", None):
        return True
    if _no_tasks():
        return False
    return any(not t.done() for t in _asyncio.all_tasks(loop))


def run_loop(fd, runner):
    """Run the event loop until it has nothing left to do; a byte on ``fd`` means requests are
    queued: ``runner.run_pending()`` runs them (in the loop, as an ipengine does) and returns
    False once the engine is to stop. Returns whether to go on serving."""
    loop = _event_loop()
    state = {"go_on": True}

    def on_wake():
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        if not runner.run_pending():
            state["go_on"] = False
            loop.stop()
        elif not _loop_busy_besides_us(loop):
            loop.stop()

    loop.add_reader(fd, on_wake)
    loop.call_soon(on_wake)
    try:
        while True:
            try:
                loop.run_forever()
                break
            except KeyboardInterrupt:
                # an interrupt (signal_request) that arrived while no request ran
                continue
    finally:
        loop.remove_reader(fd)
    return state["go_on"]


def _loop_busy_besides_us(loop):
    if getattr(loop, "_scheduled", None):
        return True
    return any(not t.done() for t in _asyncio.all_tasks(loop))
