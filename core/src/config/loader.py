# rpar config loader: runs one or more `*_config.py` files with a recording `c` object and
# reports every `c.Class.trait = value` assignment, with its file and line, as JSON.
#
# Invoked by rpar-core (`config.rs`) as:  python3 -c <this file> FILE...
# The result goes to the original stdout; file descriptor 1 is pointed at stderr while the config
# files run, so a config file (or a program it starts) that prints does not corrupt the result.
# Result: {"settings": [...], "error": null | {...}}.
import json
import math
import os
import sys
import traceback

_files = []


class _ConfigUseError(Exception):
    pass


def _caller():
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename not in _files:
        f = f.f_back
    if f is None:
        return None, None
    return f.f_code.co_filename, f.f_lineno


def _plain(v, path):
    """Convert a config value to JSON data, or raise TypeError naming what does not fit."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise TypeError(f"{path}: {v!r} cannot be stored in a config")
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_plain(x, path) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted((_plain(x, path) for x in v), key=repr)
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, (str, int, float, bool)):
                raise TypeError(f"{path}: dict key {k!r} must be a string or a number")
            out[str(k)] = _plain(x, path)
        return out
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise TypeError(
        f"{path}: a value of type {type(v).__name__} cannot be stored in a config "
        "(use strings, numbers, booleans, None, lists, tuples and dicts)"
    )


class _Section:
    def __init__(self, rec, name):
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", {})

    def __setattr__(self, trait, value):
        if trait.startswith("_"):
            raise _ConfigUseError(f"c.{self._name}.{trait}: trait names do not start with '_'")
        self._rec._record(self._name, trait, value)
        self._values[trait] = value

    __setitem__ = __setattr__

    def __getattr__(self, trait):
        if trait.startswith("__"):
            raise AttributeError(trait)
        if trait in self._values:
            return self._values[trait]
        raise _ConfigUseError(
            f"c.{self._name}.{trait} is read before anything assigned it; "
            f"assign the whole value instead (c.{self._name}.{trait} = ...)"
        )

    __getitem__ = __getattr__

    def __contains__(self, trait):
        return trait in self._values


class _Config:
    def __init__(self):
        object.__setattr__(self, "_sections", {})
        object.__setattr__(self, "settings", [])

    def _record(self, cls, trait, value):
        path = f"c.{cls}.{trait}"
        fname, line = _caller()
        self.settings.append(
            {"class": cls, "trait": trait, "value": _plain(value, path), "file": fname, "line": line}
        )

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if not name[:1].isupper():
            raise _ConfigUseError(
                f"c.{name}: a config section is a class name starting with a capital letter "
                "(c.Class.trait = value)"
            )
        sec = self._sections.get(name)
        if sec is None:
            sec = self._sections[name] = _Section(self, name)
        return sec

    __getitem__ = __getattr__

    def __setattr__(self, name, value):
        if isinstance(value, dict):
            sec = self.__getattr__(name)
            for k, v in value.items():
                setattr(sec, k, v)
            return
        raise _ConfigUseError(f"c.{name} = ...: assign traits, as in c.{name}.trait = value")

    __setitem__ = __setattr__


def main():
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    files = [os.path.abspath(p) for p in sys.argv[1:]]
    _files.extend(files)
    cfg = _Config()
    out = {"settings": cfg.settings, "error": None}

    def load_subconfig(fname, profile=None):
        base = os.path.dirname(_caller()[0] or files[0])
        path = fname if os.path.isabs(fname) else os.path.join(base, fname)
        if not os.path.exists(path):
            return
        path = os.path.abspath(path)
        _files.append(path)
        run(path)

    def run(path):
        with open(path, encoding="utf-8") as fh:
            src = fh.read()
        code = compile(src, path, "exec")
        ns = {
            "c": cfg,
            "get_config": lambda: cfg,
            "load_subconfig": load_subconfig,
            "__file__": path,
            "__name__": "__rpar_config__",
        }
        exec(code, ns)

    try:
        for path in files:
            run(path)
    except SyntaxError as e:
        out["error"] = {
            "file": e.filename,
            "line": e.lineno,
            "message": f"SyntaxError: {e.msg}",
            "text": (e.text or "").rstrip(),
        }
    except BaseException as e:  # noqa: BLE001 - report everything, with the line
        fname, line = None, None
        for fs in traceback.extract_tb(e.__traceback__):
            if fs.filename in _files:
                fname, line = fs.filename, fs.lineno
        if isinstance(e, (_ConfigUseError, TypeError)) and fname is None:
            fname, line = _caller()
        kind = "" if isinstance(e, _ConfigUseError) else f"{type(e).__name__}: "
        out["error"] = {"file": fname, "line": line, "message": f"{kind}{e}", "text": ""}
    data = json.dumps(out).encode()
    while data:
        n = os.write(result_fd, data)
        data = data[n:]
    os.close(result_fd)


main()
