"""``bind_kernel()`` on an rpar engine: a Jupyter kernel bound to the engine's namespace.

Loaded as module ``_rpar_bound_kernel``. ``ipyparallel.bind_kernel()`` (through the engine's
``IPEngine.instance().bind_kernel``) opens the five kernel sockets of the Jupyter protocol on
``IPKernelApp.ip`` (default 127.0.0.1) and writes their connection file where an ipengine writes
it, ``<profile>/security/kernel-<pid>.json``, so ``jupyter console --existing <file>`` (or any
Jupyter client) attaches to the engine and sees its variables. The sockets are served by the
engine's asyncio loop between ipyparallel requests (rpar-engine keeps that loop running while a
kernel is bound); code run from a Jupyter client runs in the engine's shell, its output goes to
that client. Every rank of an MPI job can bind its own kernel (each rank is its own process).
"""

import json
import os
import sys
import threading

import _rpar_engine as _support

_bound = None


class _Stream:
    """sys.stdout / sys.stderr while a Jupyter client's request runs: ``stream`` messages."""

    def __init__(self, kernel, name):
        self.kernel = kernel
        self.name = name
        self.encoding = "utf-8"

    def write(self, text):
        if text:
            self.kernel.iopub_send("stream", {"name": self.name, "text": str(text)})
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False

    def writable(self):
        return True


class BoundKernel:
    def __init__(self, shell, engine, loop, ip):
        import uuid

        import zmq
        from jupyter_client.session import Session

        self.zmq = zmq
        self.shell = shell
        self.loop = loop
        self.parent = {}
        key = str(uuid.uuid4()).encode()
        self.session = Session(key=key, signature_scheme="hmac-sha256", username="rpar-engine")
        self.ctx = zmq.Context()
        url = f"tcp://{ip}"
        self.shell_sock = self.ctx.socket(zmq.ROUTER)
        self.control_sock = self.ctx.socket(zmq.ROUTER)
        self.stdin_sock = self.ctx.socket(zmq.ROUTER)
        self.iopub_sock = self.ctx.socket(zmq.PUB)
        self.hb_sock = self.ctx.socket(zmq.ROUTER)
        ports = {
            "shell_port": self.shell_sock.bind_to_random_port(url),
            "control_port": self.control_sock.bind_to_random_port(url),
            "stdin_port": self.stdin_sock.bind_to_random_port(url),
            "iopub_port": self.iopub_sock.bind_to_random_port(url),
            "hb_port": self.hb_sock.bind_to_random_port(url),
        }
        # heartbeat: echo every ping, on a thread of its own (zmq.proxy holds no GIL)
        threading.Thread(target=self._heart, name="rpar-kernel-heart", daemon=True).start()
        security = os.path.join(engine.get("profile_dir") or ".", "security")
        os.makedirs(security, exist_ok=True)
        self.connection_file = os.path.join(security, f"kernel-{os.getpid()}.json")
        info = dict(
            ports,
            ip=ip,
            key=key.decode(),
            transport="tcp",
            signature_scheme="hmac-sha256",
            kernel_name="",
        )
        tmp = self.connection_file + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, self.connection_file)
        for sock, handler in ((self.shell_sock, self.on_shell), (self.control_sock, self.on_shell)):
            self._watch(sock, handler)
        # keeps the engine's loop running between ipyparallel requests while the kernel is bound
        self.alive = loop.create_future()
        self.keeper = loop.create_task(self._keep())

    async def _keep(self):
        await self.alive

    def _heart(self):
        try:
            self.zmq.proxy(self.hb_sock, self.hb_sock)
        except self.zmq.ZMQError:
            pass

    def _watch(self, sock, handler):
        zmq = self.zmq

        def readable():
            # the descriptor is edge-triggered: drain, and check again after every reply
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frames = sock.recv_multipart(zmq.NOBLOCK)
                try:
                    idents, msg = self.session.feed_identities(frames, copy=True)
                    msg = self.session.deserialize(msg, content=True, copy=True)
                except Exception as e:
                    print(f"rpar-engine bound kernel: bad message dropped: {e}", file=sys.__stderr__)
                    continue
                handler(sock, idents, msg)

        self.loop.add_reader(sock.getsockopt(zmq.FD), readable)
        self.loop.call_soon(readable)

    # ------------------------------------------------------------------ messages

    def iopub_send(self, msg_type, content):
        self.session.send(self.iopub_sock, msg_type, content, parent=self.parent, ident=f"kernel.{msg_type}".encode())

    def reply(self, sock, idents, msg_type, content):
        self.session.send(sock, msg_type, content, parent=self.parent, ident=idents)

    def on_shell(self, sock, idents, msg):
        self.parent = msg
        msg_type = msg["header"]["msg_type"]
        content = msg.get("content") or {}
        self.iopub_send("status", {"execution_state": "busy"})
        try:
            handler = getattr(self, "do_" + msg_type.removesuffix("_request"), None)
            if handler is None or not msg_type.endswith("_request"):
                print(f"rpar-engine bound kernel: {msg_type} not supported", file=sys.__stderr__)
            else:
                reply = handler(content)
                if reply is not None:
                    self.reply(sock, idents, msg_type.removesuffix("_request") + "_reply", reply)
        finally:
            self.iopub_send("status", {"execution_state": "idle"})

    def do_kernel_info(self, content):
        import IPython

        v = sys.version_info
        return {
            "status": "ok",
            "protocol_version": "5.3",
            "implementation": "rpar-engine",
            "implementation_version": "1",
            "language_info": {
                "name": "python",
                "version": f"{v[0]}.{v[1]}.{v[2]}",
                "mimetype": "text/x-python",
                "file_extension": ".py",
                "pygments_lexer": "ipython3",
                "codemirror_mode": {"name": "ipython", "version": 3},
                "nbconvert_exporter": "python",
            },
            "banner": f"rpar-engine {_support._engine.get('engine_id')} (IPython {IPython.__version__})",
            "help_links": [],
        }

    def do_execute(self, content):
        sh = self.shell
        code = content.get("code", "")
        silent = bool(content.get("silent", False))
        store = bool(content.get("store_history", not silent))
        if not silent:
            self.iopub_send("execute_input", {"code": code, "execution_count": sh.execution_count})
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Stream(self, "stdout"), _Stream(self, "stderr")
        _support._sink = self.iopub_send
        sh._last_traceback = None
        try:
            res = sh.run_cell(code, store_history=store, silent=silent)
        finally:
            _support._sink = None
            sys.stdout, sys.stderr = old
        err = res.error_before_exec or res.error_in_exec
        if err is not None:
            reply = {
                "status": "error",
                "ename": type(err).__name__,
                "evalue": str(err),
                "traceback": sh._last_traceback or [],
            }
        else:
            reply = {"status": "ok", "payload": []}
            exprs = content.get("user_expressions") or {}
            reply["user_expressions"] = sh.user_expressions(exprs) if exprs else {}
        reply["execution_count"] = sh.execution_count - 1
        return reply

    def do_complete(self, content):
        code = content.get("code", "")
        pos = content.get("cursor_pos", len(code))
        matches = []
        if hasattr(self.shell, "complete"):
            text, matches = self.shell.complete("", code, pos)
            start = pos - len(text)
        else:
            start = pos
        return {"status": "ok", "matches": list(matches), "cursor_start": start, "cursor_end": pos, "metadata": {}}

    def do_is_complete(self, content):
        tm = getattr(self.shell, "input_transformer_manager", None)
        if tm is None:
            return {"status": "unknown"}
        status, indent = tm.check_complete(content.get("code", ""))
        out = {"status": status}
        if status == "incomplete":
            out["indent"] = " " * (indent or 0)
        return out

    def do_inspect(self, content):
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    def do_history(self, content):
        return {"status": "ok", "history": []}

    def do_comm_info(self, content):
        return {"status": "ok", "comms": {}}

    def do_interrupt(self, content):
        return {"status": "ok"}

    def do_shutdown(self, content):
        """Shuts the bound kernel down (the engine goes on)."""
        self.loop.call_soon(self.close)
        return {"status": "ok", "restart": False}

    def close(self):
        global _bound
        for sock in (self.shell_sock, self.control_sock):
            try:
                self.loop.remove_reader(sock.getsockopt(self.zmq.FD))
            except Exception:
                pass
        if not self.alive.done():
            self.alive.set_result(None)
        self.ctx.destroy(linger=0)
        try:
            os.unlink(self.connection_file)
        except OSError:
            pass
        if _bound is self:
            _bound = None


def _kernel_ip():
    for app in ("IPKernelApp", "ConnectionFileMixin"):
        ip = (_support._config.get(app) or {}).get("ip")
        if ip:
            return ip
    return "127.0.0.1"


def bind_kernel(shell, engine, loop, **kwargs):
    """Bind a kernel to this engine (once; later calls do nothing). Returns None, as ipengine."""
    global _bound
    if _bound is not None:
        return None
    _bound = BoundKernel(shell, engine, loop, _kernel_ip())
    name = os.path.basename(_bound.connection_file)
    print(
        f"rpar-engine {engine.get('engine_id')}: kernel bound; to connect another client to this "
        f"kernel, use: --existing {name}  ({_bound.connection_file})",
        file=sys.stderr,
    )
    return None
