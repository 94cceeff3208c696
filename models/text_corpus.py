"""The text model's corpus: the docstrings of the running interpreter's standard library.

Nothing is downloaded and nothing is imported. Every ``.py`` file of the standard library
(``sysconfig.get_paths()["stdlib"]``, ``site-packages`` excluded) is read in sorted path order
and parsed with :mod:`ast`; a module's *document* is its docstrings in source order:

    # json.decoder
    <module docstring>

    class JSONDecoder(object)
    <class docstring>

    def JSONDecoder.decode(self, s, _w=WHITESPACE.match)
    <method docstring>

Docstrings are taken with ``ast.get_docstring(node, clean=True)``, i.e. ``inspect.cleandoc``,
the same text ``inspect.getdoc`` returns for objects that define their own docstring (no
inheritance, so an inherited docstring is not repeated). Parsing instead of importing keeps
the walk free of side effects (``this``, ``antigravity``) and identical on every run;
C extension modules (``math``, ``_io``) have no source and are left out. Documents with
fewer than ``MIN_CHARS`` characters of docstring text are dropped.

Skipped as noisy or not prose: ``test`` / ``tests`` / ``idle_test`` packages and ``test_*``
modules, ``idlelib``, ``tkinter``, ``turtle``, ``turtledemo``, ``lib2to3``, ``ensurepip``,
``pydoc_data``, ``site-packages``, ``__pycache__``, ``__main__`` / ``__phello__`` /
``_pydev*`` modules, and the top-level names in ``SKIP_TOP``.

Held-out split, by *top-level package*, so no held-out text (not even a sibling submodule)
is seen in training: a module is held out when

    int(hashlib.sha256(top.encode()).hexdigest()[:8], 16) % HELDOUT_MOD == 0

with ``top = module_name.split(".")[0]`` and ``HELDOUT_MOD = 20`` (about 5 % of the
top-level names). The corpus depends on the Python version (3.11.7 for the shipped
checkpoint); :func:`describe` records it.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELDOUT_MOD = 20
MIN_CHARS = 200
SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
             "pydoc_data", "site-packages", "dist-packages", "__pycache__", "config-3.11-x86_64-linux-gnu"}
SKIP_TOP = {"turtle", "this", "antigravity", "__main__", "__phello__", "__hello__", "_pydev", "_pydevd",
            "__future__", "_sysconfigdata", "sitecustomize", "usercustomize"}


@dataclass(frozen=True)
class Document:
    module: str  # dotted module name, e.g. "json.decoder"
    text: str


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _skipped(path: Path, root: Path) -> bool:
    rel = path.relative_to(root).parts
    if any(p in SKIP_DIRS or p.startswith("config-") for p in rel[:-1]):
        return True
    stem = path.stem
    if stem.startswith("test_") or stem == "__main__":
        return True
    top = rel[0].removesuffix(".py")
    return top in SKIP_TOP or top.startswith("_sysconfigdata") or top.startswith("_pydev")


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    try:
        return ast.unparse(node.args)
    except Exception:  # pragma: no cover - unparse covers every 3.11 construct
        return "..."


def _docstrings(tree: ast.Module, name: str) -> list[str]:
    parts = [f"# {name}"]
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        parts.append(doc)

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                bases = ", ".join(ast.unparse(b) for b in node.bases)
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    parts.append(f"class {prefix}{node.name}({bases})\n{doc}")
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    parts.append(f"def {prefix}{node.name}({_signature(node)})\n{doc}")

    visit(tree.body, "")
    return parts


def is_heldout(module: str, mod: int = HELDOUT_MOD) -> bool:
    top = module.split(".")[0]
    return int(hashlib.sha256(top.encode()).hexdigest()[:8], 16) % mod == 0


def documents(root: Path | None = None) -> list[Document]:
    """Every kept module's document, in sorted path order."""
    root = root or stdlib_dir()
    docs = []
    for path in sorted(root.rglob("*.py")):
        if _skipped(path, root):
            continue
        name = module_name(path, root)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        parts = _docstrings(tree, name)
        if sum(len(p) for p in parts[1:]) < MIN_CHARS:
            continue
        docs.append(Document(name, "\n\n".join(parts) + "\n"))
    return docs


def split(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """``(train, held_out)`` by the hash of the top-level package (see the module docstring)."""
    train = [d for d in docs if not is_heldout(d.module)]
    held = [d for d in docs if is_heldout(d.module)]
    return train, held


def describe(train: list[Document], held: list[Document]) -> dict:
    tops = lambda ds: sorted({d.module.split(".")[0] for d in ds})  # noqa: E731
    return {
        "source": "docstrings of the CPython standard library (.py sources, parsed with ast)",
        "python": sys.version.split()[0],
        "stdlib_dir": str(stdlib_dir()),
        "heldout_rule": f"int(sha256(top_level_name)[:8], 16) % {HELDOUT_MOD} == 0",
        "train": {"modules": len(train), "top_level": len(tops(train)), "chars": sum(len(d.text) for d in train)},
        "held_out": {"modules": len(held), "top_level_names": tops(held), "chars": sum(len(d.text) for d in held)},
    }


if __name__ == "__main__":
    import json

    tr, ho = split(documents())
    print(json.dumps(describe(tr, ho), indent=1))
