"""Data for users' own exports: ``--calibration-data`` and ``--eval-data``.

A source is one of:

- a ``.npz`` (one array per input name; for eval also ``y``, and ``x`` for a one-input
  network) or a ``.npy`` (calibration of a one-input network);
- a folder of images (.png .jpg .jpeg .bmp .gif .webp .tif .tiff), decoded and resized
  exactly as the serving pipeline's ``image.decode_resize`` does (``ImageSpec.tensor``):
  height, width and color from the single image input's declared ``(batch, C, H, W)``,
  ``--preprocess KEY=VALUE`` on top. For calibration the folder is searched recursively;
  for eval it holds one subfolder per class (the class index is the subfolder's position
  in the labels, or in the sorted subfolder names without labels);
- ``PATH.py:FUNC`` or ``package.module:FUNC`` (calibration only): ``FUNC()`` returns an
  iterable of batches, each a dict name -> array, a bare array (one-input networks) or a
  tuple/list of arrays in input order; numpy arrays or torch tensors.

At most ``limit`` samples are taken from any source: of more, an evenly strided (so
deterministic) selection. Everything is checked against the spec (shapes, then cast to
the declared dtypes); every mistake is a :class:`UserInputError` naming the flag.
Names and folders starting with ``.`` are skipped (``.ipynb_checkpoints``, ``.DS_Store``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from export.errors import UserInputError
from export.references import load_function, parse_module_ref
from export.spec import ExportSpec, IOSpec

if TYPE_CHECKING:
    from export.families import HeldOut
    from server.pipelines.image import ImageSpec

CALIBRATION_FLAG = "--calibration-data"
EVAL_FLAG = "--eval-data"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
NO_OPTIONS: Mapping[str, str] = MappingProxyType({})
SHOW = 5  # names listed in a message
DECODE_THREADS = min(8, os.cpu_count() or 1)  # Pillow releases the GIL while decoding


def load_calibration(source: str | Path, spec: ExportSpec, preprocess: Mapping[str, str] = NO_OPTIONS,
                     limit: int = 512) -> dict[str, np.ndarray]:
    """Calibration samples per input name, at most ``limit`` of them, fitted to ``spec``."""
    flag = CALIBRATION_FLAG
    if _is_function_ref(source):
        return _from_function(str(source), spec, flag, limit)
    path = _existing(source, flag)
    if path.is_dir():
        io, image = _image_spec(spec, preprocess, flag, path)
        paths = _images(path)
        if not paths:
            raise UserInputError(f"{flag} {path}: no images ({' '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        return _fit(spec, {io.name: _decode([paths[i] for i in _every(len(paths), limit)], image, flag)}, flag, path)
    data = _load_arrays(path, flag)
    if isinstance(data, np.ndarray):
        if len(spec.inputs) != 1:
            raise UserInputError(f"{flag} {path}: a .npy holds one array, the network has "
                                 f"{len(spec.inputs)} inputs; use a .npz with one array per input name")
        data = {spec.input_names[0]: data}
    feed = _fit(spec, data, flag, path)
    keep = _every(_length(feed), limit)
    return {name: np.ascontiguousarray(a[keep]) for name, a in feed.items()}


def load_eval(source: str | Path, spec: ExportSpec, preprocess: Mapping[str, str] = NO_OPTIONS,
              labels: Sequence[str] | None = None, limit: int = 2000) -> HeldOut:
    """Held-out (inputs per name, int64 labels), at most ``limit`` samples, fitted to ``spec``."""
    flag = EVAL_FLAG
    path = _existing(source, flag)
    if path.is_dir():
        io, image = _image_spec(spec, preprocess, flag, path)
        paths, classes = _class_folders(path, labels, flag)
        keep = _every(len(paths), limit)
        feed = _fit(spec, {io.name: _decode([paths[i] for i in keep], image, flag)}, flag, path)
        return feed, classes[keep]
    data = _load_arrays(path, flag)
    if isinstance(data, np.ndarray) or "y" not in data:
        raise UserInputError(f"{flag} {path}: expected a .npz with 'y' (integer labels) and 'x' "
                             "(or one array per input name), or a folder with one subfolder of images per class")
    arrays = dict(data)
    y = arrays.pop("y")
    if "x" in arrays and len(spec.inputs) == 1 and spec.input_names[0] not in arrays:
        arrays[spec.input_names[0]] = arrays.pop("x")
    feed = _fit(spec, arrays, flag, path)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserInputError(f"{flag} {path}: 'y' must be a 1-D integer array, not {y.dtype}{y.shape}")
    n = _length(feed)
    if len(y) != n:
        raise UserInputError(f"{flag} {path}: {len(y)} labels for {n} inputs")
    keep = _every(n, limit)
    return {name: np.ascontiguousarray(a[keep]) for name, a in feed.items()}, y[keep].astype(np.int64)


# -- arrays ---------------------------------------------------------------------------------

def _load_arrays(path: Path, flag: str) -> dict[str, np.ndarray] | np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:
        raise UserInputError(f"{flag} {path}: not a readable .npz/.npy file: {err}") from None


def _fit(spec: ExportSpec, arrays: Mapping[str, np.ndarray], flag: str, where: str | Path) -> dict[str, np.ndarray]:
    """Arrays per input name, checked against the input specs and cast to their dtypes."""
    missing = [n for n in spec.input_names if n not in arrays]
    if missing:
        raise UserInputError(f"{flag} {where}: no array for input(s) {missing}; it has {sorted(arrays)}")
    feed, batch = {}, None
    for io in spec.inputs:
        a = arrays[io.name]
        fixed_ok = a.ndim == len(io.shape) and all(isinstance(d, str) or d == s for d, s in zip(io.shape, a.shape, strict=True))
        if not fixed_ok:
            want = ",".join(str(d) for d in io.shape)
            raise UserInputError(f"{flag} {where}: '{io.name}' has shape {a.shape}, the input is declared {want}")
        if batch is not None and a.shape[0] != batch:
            raise UserInputError(f"{flag} {where}: the arrays have different lengths ({batch} and {a.shape[0]})")
        batch = a.shape[0]
        feed[io.name] = np.ascontiguousarray(a.astype(io.dtype, copy=False))
    return feed


def _length(feed: Mapping[str, np.ndarray]) -> int:
    return next(iter(feed.values())).shape[0]


def _every(n: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` samples, evenly strided over all of them."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    return np.arange(n) if n <= limit else np.arange(limit) * n // limit


def _existing(source: str | Path, flag: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise UserInputError(f"{flag}: no such file or folder {source}")
    return path


# -- image folders ----------------------------------------------------------------------------

def _image_spec(spec: ExportSpec, preprocess: Mapping[str, str], flag: str, path: Path) -> tuple[IOSpec, ImageSpec]:
    """The one image input and how images become its tensors: H, W and C (1: L, 3: RGB)
    from its declared shape, ``--preprocess`` on top (as the pipeline ``--task`` writes)."""
    from server.pipelines.image import ImageSpec

    shapes = ", ".join(f"{io.name} {','.join(map(str, io.shape))}" for io in spec.inputs)
    if len(spec.inputs) != 1 or len(spec.inputs[0].shape) != 4:
        raise UserInputError(f"{flag} {path}: a folder of images feeds a network with one image input "
                             f"(batch, C, H, W); this one takes {shapes}")
    io = spec.inputs[0]
    nhwc = preprocess.get("layout", "NCHW").upper() == "NHWC"
    height, width, channels = io.shape[1:4] if nhwc else (*io.shape[2:4], io.shape[1])
    if isinstance(channels, int) and channels not in (1, 3):
        raise UserInputError(f"{flag} {path}: images have 1 (L) or 3 (RGB) channels; the input is declared {shapes}")
    params = {key: str(d) for key, d in (("height", height), ("width", width)) if isinstance(d, int)}
    if isinstance(channels, int):
        params["color"] = "L" if channels == 1 else "RGB"
    params.update(preprocess)
    missing = [key for key in ("height", "width") if key not in params]
    if missing:
        raise UserInputError(f"{flag} {path}: the input is declared {shapes}; a folder of images needs a fixed "
                             f"height and width, or --preprocess {'=... '.join(missing)}=...")
    try:
        return io, ImageSpec.from_parameters(dict(params))
    except ValueError as err:
        raise UserInputError(f"--preprocess (for {flag} {path}): {err}") from None


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively), sorted."""
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _visible(p, root))


def _class_folders(root: Path, labels: Sequence[str] | None, flag: str) -> tuple[list[Path], np.ndarray]:
    """Every image of ``root/CLASS/...`` (sorted) and its class index."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p, root))
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose or not folders:
        found = f"images directly in it ({', '.join(loose[:SHOW])})" if loose else "no subfolders"
        raise UserInputError(f"{flag} {root}: expected one subfolder of images per class (e.g. {root}/cat/1.png), "
                             f"found {found}")
    names = list(labels) if labels is not None else [p.name for p in folders]
    unknown = [p.name for p in folders if p.name not in names]
    if unknown:
        raise UserInputError(f"{flag} {root}: class folder(s) {unknown} are not among the labels "
                             f"({', '.join(names[:SHOW])}{', ...' if len(names) > SHOW else ''})")
    paths, classes = [], []
    for folder in folders:
        found = _images(folder)
        paths += found
        classes += [names.index(folder.name)] * len(found)
    if not paths:
        raise UserInputError(f"{flag} {root}: no images ({' '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    return paths, np.asarray(classes, np.int64)


def _decode(paths: Sequence[Path], image: ImageSpec, flag: str) -> np.ndarray:
    """The images as the pipeline's ``image.decode_resize`` makes them: (N, C, H, W) float32
    (or (N, H, W, C) with layout=NHWC)."""
    from server.core.errors import InvalidInput

    def one(path: Path) -> np.ndarray:
        try:
            return image.tensor(path.read_bytes())[0]
        except (InvalidInput, OSError) as err:
            raise UserInputError(f"{flag} {path}: not a decodable image: {err}") from None

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        return np.stack(list(pool.map(one, paths)))


# -- a function of the user's ----------------------------------------------------------------

def _is_function_ref(source: str | Path) -> bool:
    return ":" in str(source) and not Path(source).exists()


def _from_function(text: str, spec: ExportSpec, flag: str, limit: int) -> dict[str, np.ndarray]:
    """``FUNC()``'s batches, fitted one by one, concatenated until ``limit`` samples."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in spec.input_names}
    count, index = 0, -1
    for index, batch in enumerate(_batches(text, flag)):
        feed = _fit(spec, _as_arrays(batch, spec, flag, f"{text} (batch {index})"), flag, f"{text} (batch {index})")
        for name, a in feed.items():
            if parts[name] and a.shape[1:] != parts[name][0].shape[1:]:
                raise UserInputError(f"{flag} {text}: batch {index} has '{name}' of shape {a.shape}, batch 0 "
                                     f"{parts[name][0].shape}; batches are concatenated, so only their first "
                                     "axes may differ")
            parts[name].append(a)
        count += _length(feed)
        if count >= limit:
            break  # the rest is never asked for: FUNC may yield forever
    if index < 0:
        raise UserInputError(f"{flag} {text}: {text.rpartition(':')[2]}() yielded no batches")
    return {name: np.ascontiguousarray(np.concatenate(arrays)[:limit]) for name, arrays in parts.items()}


def _batches(text: str, flag: str) -> Iterator[object]:
    """``FUNC()``'s batches; whatever the user's code raises becomes a UserInputError."""
    func, name = load_function(text, flag), parse_module_ref(text, flag)[1]
    try:
        result = func()
    except Exception as err:
        raise UserInputError(f"{flag} {text}: {name}() raised {type(err).__name__}: {err}") from None
    if isinstance(result, Mapping) or _is_array(result):
        result = [result]  # one bare batch
    if not isinstance(result, Iterable) or isinstance(result, str | bytes):
        raise UserInputError(f"{flag} {text}: {name}() returned {type(result).__name__}, not an iterable of batches")
    iterator, index = iter(result), 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as err:
            raise UserInputError(f"{flag} {text}: {name}() raised {type(err).__name__} after {index} batch(es): "
                                 f"{err}") from None
        yield batch
        index += 1


def _is_array(value: object) -> bool:
    torch = sys.modules.get("torch")  # only if already imported: a torch tensor comes from code that imported it
    return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def _as_arrays(batch: object, spec: ExportSpec, flag: str, where: str) -> dict[str, np.ndarray]:
    """One batch -> arrays per input name."""
    names = spec.input_names
    if isinstance(batch, Mapping):
        return {str(name): _array(value, flag, f"{where} '{name}'") for name, value in batch.items()}
    if isinstance(batch, tuple | list):
        if len(batch) != len(names):
            raise UserInputError(f"{flag} {where}: a batch of {len(batch)} arrays; the network has {len(names)} "
                                 f"input(s) {names}")
        return {name: _array(value, flag, f"{where} '{name}'") for name, value in zip(names, batch, strict=True)}
    if not _is_array(batch):
        raise UserInputError(f"{flag} {where}: got {type(batch).__name__}; a batch is a dict name -> array, an "
                             "array (one-input networks) or a tuple of arrays in input order")
    if len(names) != 1:
        raise UserInputError(f"{flag} {where}: a bare array, but the network has {len(names)} inputs {names}; "
                             "yield a dict name -> array or a tuple in input order")
    return {names[0]: _array(batch, flag, where)}


def _array(value: object, flag: str, where: str) -> np.ndarray:
    if not _is_array(value):
        raise UserInputError(f"{flag} {where}: got {type(value).__name__}, not a numpy array or torch tensor")
    if isinstance(value, np.ndarray):
        return value
    try:
        return value.detach().cpu().numpy()  # a torch tensor (see _is_array)
    except (TypeError, RuntimeError) as err:  # bfloat16 and the like have no numpy dtype
        raise UserInputError(f"{flag} {where}: the tensor cannot be converted to numpy: {err}") from None
