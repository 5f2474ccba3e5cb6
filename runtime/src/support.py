"""rpar-engine's Python side: the user namespace and the request handlers that need Python.

Loaded into the embedded interpreter of every rank as module ``_rpar_engine``. The Rust side calls
``setup``, then ``execute`` / ``apply`` / ``clear`` once per request, on the main thread, one at a
time. IOPub side effects (execute_input, execute_result, display_data, error) go through the
``publisher`` object Rust passes in: ``publisher.publish(kind, msg_type, content_json)``.
Replies are returned to Rust as JSON text (plus buffers for apply).
"""

import ast
import json
import sys
import traceback

_pub = None
_shell = None
_engine = {}


def _json(obj):
    def default(o):
        if isinstance(o, (bytes, bytearray)):
            import base64

            return base64.b64encode(bytes(o)).decode("ascii")
        if hasattr(o, "isoformat"):
            return o.isoformat()
        return repr(o)

    return json.dumps(obj, default=default, ensure_ascii=False, allow_nan=False)


def _publish(kind, msg_type, content):
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass
    try:
        text = _json(content)
    except ValueError:
        text = json.dumps(json.loads(json.dumps(content, default=repr)), default=repr)
    _pub.publish(kind, msg_type, text)


def _make_ipython_shell():
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type
    from traitlets.config import Config

    class EngineDisplayHook(DisplayHook):
        """execute_result on IOPub instead of an Out[] prompt on stdout."""

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

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
            content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
            _publish("displaypub", "update_display_data" if update else "display_data", content)

        def clear_output(self, wait=False):
            _publish("clear_output", "clear_output", {"wait": wait})

    class EngineShell(InteractiveShell):
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

    cfg = Config()
    # Many engines share one profile: no history database (sqlite locks under N writers).
    cfg.HistoryManager.enabled = False
    cfg.HistoryManager.hist_file = ":memory:"
    shell = EngineShell.instance(config=cfg)
    shell._last_traceback = None
    return shell


class _PlainShell:
    """The namespace and execution rules of IPython, minus IPython (when it is not installed)."""

    def __init__(self):
        import builtins
        import types

        self.user_module = types.ModuleType("__main__")
        self.user_ns = self.user_module.__dict__
        self.user_ns["__builtins__"] = builtins
        sys.modules["__main__"] = self.user_module
        self.user_global_ns = self.user_ns
        self.execution_count = 1
        self._last_traceback = None

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
        keep = {k: self.user_ns[k] for k in ("__builtins__", "__name__") if k in self.user_ns}
        self.user_ns.clear()
        self.user_ns.update(keep)


def setup(publisher, engine_id, engine_uuid, use_ipython=True):
    """Create the shell and user namespace. Returns a description of what runs."""
    global _pub, _shell
    _pub = publisher
    _engine.update(engine_id=engine_id, engine_uuid=engine_uuid)
    # signal_request(SIGINT) interrupts running code (mpiexec may start us with SIGINT ignored)
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    kind = "plain"
    if use_ipython:
        try:
            _shell = _make_ipython_shell()
            kind = "IPython"
        except ImportError:
            _shell = None
    if _shell is None:
        _shell = _PlainShell()
    return kind


def run_startup(script, command):
    """IPEngine.startup_script then startup_command, in the user namespace."""
    if script:
        with open(script) as f:
            code = f.read()
        exec(compile(code, script, "exec"), _shell.user_ns)
    if command:
        exec(compile(command, "<startup_command>", "exec"), _shell.user_ns)


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
    shell = _shell
    if not silent:
        _publish("execute_input", "execute_input", {"code": code, "execution_count": shell.execution_count})
    shell._last_traceback = None
    res = shell.run_cell(code, store_history=store_history, silent=silent)
    err = res.error_before_exec or res.error_in_exec
    if err is not None:
        content = _error_content(err)
    else:
        content = {"status": "ok"}
    content["execution_count"] = shell.execution_count - 1
    exprs = json.loads(user_expressions_json or "{}")
    if content["status"] == "ok" and exprs:
        content["user_expressions"] = shell.user_expressions(exprs)
    else:
        content["user_expressions"] = {}
    content["payload"] = []
    shell._last_traceback = None
    return _json(content)


def warm():
    """Import what apply requests need (ipyparallel's serialization, ~0.1 s of CPU) once the
    engine is up, instead of inside the first task. A missing ipyparallel is reported by apply."""
    try:
        import ipyparallel.serialize  # noqa: F401
    except Exception:
        pass


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


def apply(bufs):
    """apply_request: f(*args, **kwargs) with ipyparallel's own serialization."""
    from ipyparallel.serialize import serialize_object, unpack_apply_message

    shell = _shell
    shell._last_traceback = None
    try:
        try:
            f, args, kwargs = unpack_apply_message(bufs, shell.user_ns, copy=False)
        except Exception as e:
            mismatch = _foreign_code(e)
            if mismatch is not None:
                raise mismatch from None
            raise
        result = f(*args, **kwargs)
        out = serialize_object(result, buffer_threshold=1024, item_threshold=64)
        out = [b if isinstance(b, bytes) else bytes(memoryview(b)) for b in out]
        return _json({"status": "ok"}), out
    except BaseException as e:
        try:
            shell.showtraceback()
        except Exception:
            pass
        content = _error_content(e)
        shell._last_traceback = None
        return _json(content), []


def clear():
    _shell.reset(False)
    return _json({"status": "ok"})
