"""``PATH.py:FUNC`` and ``package.module:FUNC``: the user's code that flags name
(``--module``, ``--finetune``, ``--calibration-data``); failures name the flag."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

from export.errors import UserInputError


def parse_module_ref(text: str, flag: str = "--module") -> tuple[str, str]:
    """``PATH.py:FUNC`` or ``package.module:FUNC`` -> (source, function name)."""
    source, sep, func = text.rpartition(":")
    if not sep or not source or not re.fullmatch(r"[A-Za-z_]\w*", func):
        raise UserInputError(f"{flag} '{text}': expected PATH.py:FUNC or package.module:FUNC")
    return source, func


def load_function(text: str, flag: str = "--module"):
    """The function ``PATH.py:FUNC`` / ``package.module:FUNC`` names (imported, not called)."""
    source, func_name = parse_module_ref(text, flag)
    func = getattr(import_module(source, flag), func_name, None)
    if not callable(func):
        raise UserInputError(f"{flag}: {source} has no function '{func_name}'")
    return func


def import_module(source: str, flag: str = "--module"):
    """A ``.py`` path is loaded from the file (its folder on sys.path for sibling imports);
    anything else is imported by module name."""
    try:
        if source.endswith(".py"):
            path = Path(source).resolve()
            if not path.is_file():
                raise UserInputError(f"{flag}: no such file {source}")
            sys.path.insert(0, str(path.parent))
            spec = importlib.util.spec_from_file_location(f"deepserve_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(source)
    except UserInputError:
        raise
    except BaseException as err:  # SyntaxError, ImportError, anything the module body raises
        if isinstance(err, KeyboardInterrupt):
            raise
        raise UserInputError(f"{flag}: could not import {source}: {type(err).__name__}: {err}") from None
