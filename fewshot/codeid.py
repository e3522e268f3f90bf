"""Code identity: a digest of a method's code that ignores comments, docstrings and layout.

A record stores the digest of the code that produced it (``provenance.code_digest``). The
sweep compares it with the current code's: a recorded run whose digest differs is *stale*
and is rerun by default (the old record moves to the results folder's history), so editing a
method (a file method, or a plugin that forgets to bump its version) never leaves an old
number standing as if the new code had made it.

The digest covers every module in the adapter class's inheritance chain that defines part
of it (KgCoOp's covers kgcoop.py and coop.py; a ``path.py:Class`` method covers its file),
except the abstract contract (``fewshot.methods.base``), and every module of the method
toolkit those modules import, directly or through each other: ``fewshot.methods._*`` (the
training loop), the other method modules a method borrows from (LP++ from CLAP, Tip-Adapter
from zero-shot, SgVA-CLIP from CoOp), ``fewshot.prompting`` (prompt construction, the text
tower's paths) and
the modules of ``fewshot.descriptions`` that load, match and hand over description sets
(:data:`DESCRIPTION_MODULES`, the toy sets included), covered for every method that declares
``knowledge`` whether it imports them or not.
The rest of the harness (sampling, encoding, the runner) is covered by the epoch below.
Each module is parsed and dumped without positions, and docstrings are dropped, so editing
a comment, a docstring or the formatting changes nothing, while any change to what the code
does changes the digest.
:data:`HARNESS_EPOCH` enters every digest: it is bumped when a change of the harness itself
alters results (the few-shot sampling rule, per-seed augmented views), so records made
before such a change are stale too.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
from functools import lru_cache
from pathlib import Path

__all__ = ["DESCRIPTION_MODULES", "HARNESS_EPOCH", "code_digest", "normalized_source"]

# 2: Dassl HEAD sampling (small classes kept whole), ImageNet val outside the support set,
#    augmented views drawn per run seed, presets that see the dataset.
HARNESS_EPOCH = 2
_SKIPPED = ("builtins", "abc", "fewshot.methods.base", "typing")
# The modules of fewshot.descriptions that load, match and hand over sets (the toy sets too).
DESCRIPTION_MODULES = tuple(f"fewshot.descriptions{m}" for m in ("", ".sets", ".files", ".toy", ".wiring"))
# Modules that make a method's training texts (GIST's captions): covered where imported.
TEXT_MODULES = ("fewshot.descriptions.captions",)


def normalized_source(text: str) -> str:
    """The syntax tree of ``text`` without docstrings, positions, comments or layout."""
    tree = ast.parse(text)
    scopes = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
    for node in ast.walk(tree):
        if isinstance(node, scopes) and node.body and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


@lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int) -> str:
    """Digest of one source file's normalised tree (cached per file version)."""
    text = Path(path).read_text(encoding="utf-8")
    return hashlib.sha256(normalized_source(text).encode()).hexdigest()


def _source_files(cls: type) -> list[str]:
    """The source files of the modules that define ``cls`` and its bases (contract excluded),
    then of the toolkit modules they import (transitively)."""
    files: list[str] = []
    for klass in cls.__mro__:
        if klass.__module__ in _SKIPPED or klass is object:
            continue
        module = sys.modules.get(klass.__module__)
        try:
            path = inspect.getsourcefile(module or klass)
        except TypeError:
            path = None
        if path and path not in files:
            files.append(path)
    if getattr(cls, "knowledge", ()):
        files += [f for f in _descriptions_files() if f not in files]
    for path in files:  # grows while it is walked: imports of imports
        for name in _imported_modules(path, _package_of(cls, path)):
            found = _toolkit_file(name)
            if found and found not in files:
                files.append(found)
    return files


def _descriptions_files() -> list[str]:
    """The modules of ``fewshot.descriptions`` that decide what a method that reads
    description sets receives (not the generators and downloaders that write sets: a set's
    content hash covers what they make)."""
    return [f for f in map(_toolkit_file, DESCRIPTION_MODULES) if f]


def _package_of(cls: type, path: str) -> str:
    """The package a file's relative imports start from ("" for a file method)."""
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is not None and getattr(module, "__file__", None) == path:
            return module.__package__ or ""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == path:
            return module.__package__ or name
    return ""


def _imported_modules(path: str, package: str) -> list[str]:
    """Absolute names of the modules ``path`` imports (``from x import y`` gives x and x.y)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def _toolkit_file(name: str) -> str | None:
    """The source file of module ``name`` if it belongs to the method toolkit, else None."""
    toolkit = name in ("fewshot.prompting", *DESCRIPTION_MODULES, *TEXT_MODULES) or (
        name.startswith(("fewshot.prompting.", "fewshot.methods.")) and name != "fewshot.methods.base"
    )
    if not toolkit:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a name imported from a module, not a module
        return None
    origin = spec.origin if spec is not None else None
    return origin if origin and origin.endswith(".py") else None


def code_digest(cls: type) -> str:
    """The code identity of an adapter class (16 hex characters)."""
    parts = [f"harness-{HARNESS_EPOCH}"]
    for path in _source_files(cls):
        parts.append(_file_digest(path, Path(path).stat().st_mtime_ns))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
