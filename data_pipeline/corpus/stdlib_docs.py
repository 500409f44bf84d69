"""Real English text that ships with every Python: docstrings of the standard library's sources
(read with `ast`, so no module is imported or run), of its built-in C modules, and pydoc's
language-reference topics. `docstrings()` lists them as (module, docstring) in a stable order.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sysconfig
from pathlib import Path
from typing import Any

try:
    from pydoc_data.topics import topics as _TOPICS
except ImportError:  # some distributions strip pydoc_data; the corpus is then another (still fixed) one
    _TOPICS = {}

# Fixed, sorted lists so the walk is stable. Modules are read as source (never imported: some run
# code on import), except built-in C modules, whose import has no side effects. Missing names are
# skipped, so another Python version gives another (still deterministic) corpus.
_SOURCE_MODULES = (
    "__future__", "_collections_abc", "_pydecimal", "_pyio", "_strptime", "_threading_local", "abc",
    "aifc", "argparse", "ast", "asynchat", "asyncio", "asyncore", "base64", "bdb", "bisect", "bz2",
    "cProfile", "calendar", "cgi", "cgitb", "chunk", "cmd", "code", "codecs", "codeop", "collections",
    "colorsys", "compileall", "concurrent", "configparser", "contextlib", "contextvars", "copy",
    "copyreg", "crypt", "csv", "ctypes", "curses", "dataclasses", "datetime", "dbm", "decimal",
    "difflib", "dis", "doctest", "email", "enum", "filecmp", "fileinput", "fnmatch", "fractions",
    "ftplib", "functools", "genericpath", "getopt", "getpass", "gettext", "glob", "graphlib", "gzip",
    "hashlib", "heapq", "hmac", "html", "http", "imaplib", "imghdr", "imp", "importlib", "inspect",
    "io", "ipaddress", "json", "keyword", "linecache", "locale", "logging", "lzma", "mailbox",
    "mailcap", "mimetypes", "modulefinder", "multiprocessing", "netrc", "nntplib", "ntpath",
    "nturl2path", "numbers", "opcode", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
    "pickletools", "pipes", "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint",
    "profile", "pstats", "pty", "py_compile", "pyclbr", "pydoc", "queue", "quopri", "random", "re",
    "reprlib", "rlcompleter", "runpy", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "site", "smtpd", "smtplib", "sndhdr", "socket", "socketserver", "sqlite3",
    "sre_compile", "sre_constants", "sre_parse", "ssl", "stat", "statistics", "string",
    "stringprep", "struct", "subprocess", "sunau", "symtable", "sysconfig", "tabnanny", "tarfile",
    "telnetlib", "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "tomllib",
    "trace", "traceback", "tracemalloc", "tty", "turtle", "types", "typing", "unittest", "urllib",
    "uu", "uuid", "venv", "warnings", "wave", "weakref", "webbrowser", "wsgiref", "xdrlib", "xml",
    "xmlrpc", "zipapp", "zipfile", "zipimport", "zoneinfo",
)  # fmt: skip
_C_MODULES = (  # the same members on every OS (posix, select, socket, mmap, sys, time are not)
    "_bisect", "_collections", "_csv", "_datetime", "_functools", "_heapq", "_io", "_json",
    "_operator", "_pickle", "_random", "_sqlite3", "_struct", "_thread", "array", "atexit",
    "binascii", "builtins", "cmath", "gc", "itertools", "marshal", "math", "pyexpat",
    "unicodedata", "zlib",
)  # fmt: skip


def _source_docstrings() -> list[tuple[str, str]]:
    """(module, docstring) for modules, classes and functions of the stdlib sources, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    for name in _SOURCE_MODULES:
        files = [root / f"{name}.py"]
        if (root / name).is_dir():
            files = sorted(p for p in (root / name).rglob("*.py") if not {"test", "tests"} & set(p.parts))
        for path in files:
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        out.append((name, doc))
    return out


def _c_module_docstrings() -> list[tuple[str, str]]:
    """Docstrings of built-in C modules (importing them runs no Python code)."""
    out: list[tuple[str, str]] = []
    for name in _C_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects: list[Any] = [module]
        for _, obj in sorted(vars(module).items()):
            if inspect.isclass(obj) or inspect.isroutine(obj):
                objects.append(obj)
                if inspect.isclass(obj):
                    objects.extend(o for _, o in sorted(vars(obj).items()) if inspect.isroutine(o))
        for obj in objects:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and doc:
                out.append((name, inspect.cleandoc(doc)))
    return out


def _topic_docstrings() -> list[tuple[str, str]]:
    """pydoc's language-reference topics (what `help("topics")` shows)."""
    return [("pydoc_data", _TOPICS[key]) for key in sorted(_TOPICS)]


def docstrings() -> list[tuple[str, str]]:
    """(module, docstring) of the sources, then the C modules, then the topics."""
    return _source_docstrings() + _c_module_docstrings() + _topic_docstrings()
