"""The model repository: scan a Triton-layout folder, load, unload, reload, report states.

A model whose config or file is broken is UNAVAILABLE with its reason in the index; the
others keep serving. A reload builds the new versions first and swaps them in only when
they are ready, so a failed reload leaves the previous versions serving (the index keeps
them READY, with the failure as their reason until the next load).

Readiness counts the models meant to be loaded: those found at startup, and those loaded
successfully since. A client's failed load of a new model is UNAVAILABLE with its reason
in the index but does not take the server's readiness down.

Safety: model names are checked (:func:`check_model_name`) before any path is built from
them; files named by a config or a load request stay inside the model's folder
(:func:`file_in_model`); error messages show repository-relative paths, never the
server's absolute ones.

Ensembles follow their steps: loading one first loads any step model that is not loaded
yet; it is READY only while every step model is; unloading a step leaves its ensembles
UNAVAILABLE with that reason until the step is back. ``unload_dependents`` on an
ensemble's unload also unloads the step models no other loaded ensemble uses.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.core.errors import DeepserveError, InvalidInput, ModelNotFound, Unavailable
from server.core.validation import check_model_name, check_version
from server.observability.metrics import Metrics
from server.observability.stats import ModelTelemetry
from server.repository.config import ModelConfig, read_config
from server.repository.loaded import LoadedModel
from server.repository.model import (
    LoadOptions,
    check_wiring,
    file_in_model,
    is_ensemble,
    load_ensemble,
    load_version,
    select_versions,
)
from server.repository.sampler import is_diffusion, load_diffusion

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass(slots=True)
class ModelEntry:
    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    versions: dict[str, LoadedModel] = field(default_factory=dict)  # the serving ones
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    temp_dir: Path | None = None  # files given with a load request live here
    counted: bool = False  # meant to be loaded: counts for the server's readiness
    failure: str = ""  # why the last load failed while versions kept serving ("" = it did not)


class ModelRepository:
    def __init__(self, root: Path, options: LoadOptions, metrics: Metrics) -> None:
        self.root = root
        self.options = options
        self.metrics = metrics
        self._entries: dict[str, ModelEntry] = {}

    # -- startup / shutdown ----------------------------------------------------------

    async def load_all(self) -> None:
        """Load every model folder; failures are recorded, never raised."""
        if not self.root.is_dir():
            raise InvalidInput(f"model repository {self.root} is not a folder")
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and path.name not in self._entries:
                try:  # (an ensemble has loaded its steps already)
                    await self.load(path.name, startup=True)
                except DeepserveError as exc:
                    log.error("model %s is UNAVAILABLE: %s", path.name, exc.message)

    async def aclose(self) -> None:
        for name in list(self._entries):
            await self.unload(name)

    # -- queries -------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedModel:
        entry = self._entries.get(name)
        if entry is None:
            check_model_name(name)  # a clear 400 for a name that can never be a model
            raise ModelNotFound(f"unknown model '{name}'")
        if not entry.versions:
            raise Unavailable(f"model '{name}' is not ready ({entry.state}{': ' + entry.reason if entry.reason else ''})")
        if not version:
            model = entry.versions[max(entry.versions, key=int)]
        else:
            model = entry.versions.get(version)
            if model is None:
                check_version(version)
                raise ModelNotFound(f"model '{name}' has no ready version '{version}'; ready: {sorted(entry.versions, key=int)}")
        if model.steps:
            reason = self._missing_step(model)
            if reason:
                raise Unavailable(f"model '{name}' is not ready: {reason}", retry_after_s=1.0)
        return model

    def _missing_step(self, model: LoadedModel) -> str:
        """Why an ensemble cannot run now ("" when every step model is ready)."""
        for step in model.steps:
            entry = self._entries.get(step)
            if entry is None or not entry.versions:
                state = "not loaded" if entry is None else f"{entry.state}: {entry.reason}" if entry.reason else entry.state
                return f"its step model '{step}' is {state}"
        return ""

    def _state(self, entry: ModelEntry) -> tuple[str, str]:
        if entry.versions:
            latest = entry.versions[max(entry.versions, key=int)]
            reason = self._missing_step(latest) if latest.steps else ""
            return (UNAVAILABLE, reason) if reason else (READY, "")
        return entry.state, entry.reason

    def ready(self) -> bool:
        """Server readiness: every model that is meant to be loaded is READY — those found
        at startup and those loaded successfully since; not the explicitly unloaded ones,
        nor a new model whose client load request failed."""
        return all(self._state(e)[0] == READY for e in self._entries.values() if e.counted)

    def count_refused(self, name: str, version: str, reason: str) -> None:
        """A failed request for ``name`` that its model never took: counted in the model's
        series (the version asked for, else the latest); a name the repository does not
        know is counted without a model label (no label values from clients' typos)."""
        entry = self._entries.get(name)
        if entry is None:
            self.metrics.unrouted_failure(reason)
        elif entry.versions:
            model = entry.versions.get(version) or entry.versions[max(entry.versions, key=int)]
            model.telemetry.request_refused(reason)
        else:
            self.metrics.failure.labels(name, "", reason).inc()

    def versions(self, name: str) -> tuple[str, ...]:
        """The ready versions of one model, oldest first (one dict lookup)."""
        entry = self._entries.get(name)
        return tuple(sorted(entry.versions, key=int)) if entry is not None else ()

    def models(self) -> list[LoadedModel]:
        return [m for entry in self._entries.values() for m in entry.versions.values()]

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: name, version, state, reason."""
        names = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")} | set(self._entries)
        rows: list[dict] = []
        for name in sorted(names):
            entry = self._entries.get(name)
            if entry is None:
                rows.append({"name": name, "state": UNAVAILABLE, "reason": "unloaded"})
                continue
            state, reason = self._state(entry)
            if state == READY and entry.failure:
                reason = entry.failure
            for version in sorted(entry.versions, key=int):
                rows.append({"name": name, "version": version, "state": state, "reason": reason})
            if not entry.versions:
                rows.append({"name": name, "state": state, "reason": reason})
        return [r for r in rows if r["state"] == READY] if ready_only else rows

    # -- load / unload ---------------------------------------------------------------

    async def load(
        self,
        name: str,
        config: ModelConfig | None = None,
        files: dict[str, bytes] | None = None,
        chain: tuple[str, ...] = (),
        startup: bool = False,
    ) -> None:
        """(Re)load a model; ``config`` overrides the folder's, ``files`` replace its files.
        ``chain``: the ensembles whose loading asked for this one (to refuse cycles).
        ``startup``: the model is meant to be loaded (the repository scan), so it counts for
        readiness even when its load fails; a client's load counts once it succeeds."""
        check_model_name(name)
        if files and config is None:
            raise InvalidInput("loading with files requires a config")
        if not files and not (self.root / name).is_dir():  # before an entry exists for it
            raise ModelNotFound(f"no model folder '{name}' in the model repository")
        entry = self._entries.setdefault(name, ModelEntry(name))
        async with entry.lock:
            entry.counted = entry.counted or startup
            if not entry.versions:
                entry.state, entry.reason = LOADING, ""
            temp_dir: Path | None = None
            try:
                model_dir, temp_dir = self._model_dir(name, files)
                new = await self._load_versions(name, model_dir, config, chain, startup)
            except BaseException as exc:  # CancelledError too: the entry never stays LOADING
                if temp_dir is not None:
                    shutil.rmtree(temp_dir, ignore_errors=True)
                message = exc.message if isinstance(exc, DeepserveError) else f"the load was interrupted ({type(exc).__name__})"
                message = message or f"{type(exc).__name__} (no message)"
                if entry.versions:  # a failed reload: the previous versions keep serving
                    entry.failure = f"the last load failed, version(s) {sorted(entry.versions, key=int)} still serving: {message}"
                else:
                    entry.state, entry.reason = UNAVAILABLE, message
                raise
            old, old_temp = entry.versions, entry.temp_dir
            entry.versions, entry.temp_dir = new, temp_dir
            entry.state, entry.reason, entry.failure, entry.counted = READY, "", "", True
            await self._retire(old.values(), keep_series=set(new))
            if old_temp is not None:
                shutil.rmtree(old_temp, ignore_errors=True)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Unload a model (queued and running requests finish first). With
        ``unload_dependents``, an ensemble's step models that no other loaded ensemble
        uses are unloaded too (Triton's semantics)."""
        check_model_name(name)
        entry = self._entries.get(name)
        if entry is None:
            if (self.root / name).is_dir():
                return  # already unloaded
            raise ModelNotFound(f"unknown model '{name}'")
        async with entry.lock:
            steps = {step for model in entry.versions.values() for step in model.steps}
            entry.state = UNLOADING
            old, entry.versions = entry.versions, {}
            await self._retire(old.values())
            entry.state, entry.reason, entry.failure, entry.counted = UNAVAILABLE, "unloaded", "", False
            if entry.temp_dir is not None:
                shutil.rmtree(entry.temp_dir, ignore_errors=True)
                entry.temp_dir = None
        if unload_dependents:
            still_used = {step for model in self.models() for step in model.steps}
            for step in sorted(steps - still_used):
                await self.unload(step, unload_dependents=True)

    # -- helpers ---------------------------------------------------------------------

    def _model_dir(self, name: str, files: dict[str, bytes] | None) -> tuple[Path, Path | None]:
        """The folder to load from, and the temporary folder to delete with the model (the
        files of a load request are written to ``<temp>/<name>/``, so messages name them
        ``<name>/<version>/<file>`` as they would in the repository)."""
        if not files:
            path = self.root / name
            if not path.is_dir():
                raise ModelNotFound(f"no model folder '{name}' in the model repository")
            return path, None
        for key in files:
            relative = key.removeprefix("file:")
            parts = relative.split("/")
            if (not key.startswith("file:") or len(parts) < 2 or "\\" in relative
                    or any(not p or p in (".", "..") or not p.isprintable() for p in parts)):
                raise InvalidInput(f"file parameter {key!r} must look like 'file:<version>/<filename>' (no '..', no absolute path)")
        temp = Path(tempfile.mkdtemp(prefix="deepserve-load-"))
        model_dir = temp / name
        try:
            for key, data in files.items():
                relative = key.removeprefix("file:")
                target = file_in_model(model_dir, model_dir, relative, "file parameter")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        except (OSError, DeepserveError) as exc:
            shutil.rmtree(temp, ignore_errors=True)
            if isinstance(exc, DeepserveError):
                raise
            raise InvalidInput(f"the load request's files cannot be written: {exc.strerror or type(exc).__name__}") from None
        return model_dir, temp

    async def _load_versions(
        self, name: str, model_dir: Path, override: ModelConfig | None, chain: tuple[str, ...], startup: bool = False
    ) -> dict[str, LoadedModel]:
        try:
            return await self._build_versions(name, model_dir, override, chain, startup)
        except DeepserveError as exc:
            text = _scrub(exc.message, model_dir, self.root)
            if text == exc.message:
                raise
            raise _with_message(exc, text) from None
        except Exception as exc:  # e.g. an unreadable config file
            raise InvalidInput(_scrub(f"model '{name}' failed to load: {exc!r}", model_dir, self.root)) from exc

    async def _build_versions(
        self, name: str, model_dir: Path, override: ModelConfig | None, chain: tuple[str, ...], startup: bool
    ) -> dict[str, LoadedModel]:
        config = override if override is not None else await asyncio.to_thread(read_config, model_dir)
        versions = select_versions(model_dir, config)
        loaded: dict[str, LoadedModel] = {}
        try:
            for version in versions:
                started = time.perf_counter()
                telemetry = ModelTelemetry(self.metrics.model(name, version), name, version)
                if is_ensemble(config):
                    model = load_ensemble(name, version, config, telemetry, self.get)
                    await self._load_steps(model, (*chain, name), startup)
                elif is_diffusion(config):
                    model = await asyncio.to_thread(load_diffusion, name, version, model_dir, config, self.options, telemetry)
                else:
                    model = await asyncio.to_thread(load_version, name, version, model_dir, config, self.options, telemetry)
                model.scheduler.start()
                loaded[version] = model
                telemetry.metrics.load_s.set(time.perf_counter() - started)
                log.info("loaded %s version %s (%d instance(s))", name, version, len(model.instances))
        except Exception as exc:
            await self._retire(loaded.values())
            if isinstance(exc, DeepserveError):
                raise
            raise InvalidInput(f"model '{name}' failed to load: {exc!r}") from exc
        return loaded

    async def _load_steps(self, ensemble: LoadedModel, chain: tuple[str, ...], startup: bool = False) -> None:
        """Load the step models that are not loaded yet, then check the ensemble's wiring."""
        for step in ensemble.steps:
            if step in chain:
                raise InvalidInput(f"ensemble '{chain[0]}' includes itself through {' -> '.join((*chain, step))}")
            entry = self._entries.get(step)
            if entry is not None and entry.versions:
                continue
            try:
                await self.load(step, chain=chain, startup=startup)
            except DeepserveError as exc:
                raise InvalidInput(f"ensemble '{ensemble.name}': step model '{step}' failed to load: {exc.message}") from None
        check_wiring(ensemble, self.get)

    async def _retire(self, models, keep_series: set[str] = frozenset()) -> None:
        """Let queued and running requests finish, then free the runtimes.

        ``keep_series``: versions whose metric series the replacing load still uses.
        """
        for model in list(models):
            await model.scheduler.aclose()
            await asyncio.to_thread(model.unload_instances)
            if model.version not in keep_series:
                self.metrics.forget(model.name, model.version)


def _scrub(message: str, model_dir: Path, root: Path) -> str:
    """``message`` with the server's absolute paths made repository-relative: the model's
    folder becomes its name (``/srv/models/digits/1/model.onnx`` -> ``digits/1/model.onnx``;
    a load request's temporary folder likewise), the repository folder goes."""
    for folder, shown in ((model_dir, model_dir.name), (root, "")):
        for form in dict.fromkeys((str(folder), str(folder.resolve()))):
            message = message.replace(form + "/", f"{shown}/" if shown else "").replace(form, shown or ".")
    return message


def _with_message(error: DeepserveError, message: str) -> DeepserveError:
    """The same kind of error (same status) with another message."""
    scrubbed = error.with_prefix("")
    scrubbed.message, scrubbed.args = message, (message,)
    return scrubbed
