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

Residency: a model whose config sets ``parameters { key: "load_on_demand" value:
{ string_value: "true" } }`` is not loaded at startup (UNAVAILABLE, "load on demand"; it
does not count for readiness); :meth:`ModelRepository.acquire` (an inference) loads it, and
concurrent first requests share that one load, each waiting at most
``on_demand_load_timeout_s``. A model's size is the process RSS delta across its load
(loads are measured one at a time). With ``memory_budget_bytes``, a load that would go over
the budget first unloads the least recently used IDLE on-demand model (no request holding
it, nothing in flight, not a step of a loaded ensemble or of one being loaded). Unloads are
reference-counted: every request holds its version from :meth:`acquire` to
:meth:`release`, and an unload (explicit, reload or eviction) waits for them before it
drains the scheduler and frees the runtimes.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import itertools
import logging
import os
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
from server.repository.generator import is_generation, load_generation
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
from server.repository.transcriber import is_transcriber, load_transcriber

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"

ON_DEMAND_PARAMETER = "load_on_demand"  # config parameter: "true" = load at the first inference
ON_DEMAND_REASON = "load on demand: its first inference request loads it"
EVICTED_REASON = "evicted to fit the memory budget (load on demand: its next inference request loads it again)"
LOADING_RETRY_AFTER_S = 1.0


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
    on_demand: bool = False  # loaded by its first inference, evictable under the memory budget
    last_used: int = 0  # the repository's use clock at its last acquire (LRU eviction)
    loading: asyncio.Task | None = None  # the on-demand load every first request waits for
    waiters: int = 0  # acquires waiting for that load: not evictable meanwhile
    size_hint: int = 0  # resident bytes measured at its last load (the next load's estimate)


class ModelRepository:
    def __init__(
        self,
        root: Path,
        options: LoadOptions,
        metrics: Metrics,
        memory_budget_bytes: int = 0,
        on_demand_load_timeout_s: float = 60.0,
    ) -> None:
        self.root = root
        self.options = options
        self.metrics = metrics
        self.memory_budget_bytes = memory_budget_bytes  # 0 = no budget
        self.on_demand_load_timeout_s = on_demand_load_timeout_s
        self._entries: dict[str, ModelEntry] = {}
        self._clock = itertools.count(1)  # the use clock (LRU): no wall time involved
        self._measure = asyncio.Lock()  # one load at a time between two RSS readings
        self._room = asyncio.Lock()  # one eviction pass at a time
        self._step_pins: dict[str, int] = {}  # steps of ensembles being loaded: not evictable

    # -- startup / shutdown ----------------------------------------------------------

    async def load_all(self) -> None:
        """Load every model folder; failures are recorded, never raised."""
        if not self.root.is_dir():
            raise InvalidInput(f"model repository {self.root} is not a folder")
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and path.name not in self._entries:
                if await asyncio.to_thread(_marked_on_demand, path):
                    self._entries[path.name] = ModelEntry(path.name, reason=ON_DEMAND_REASON, on_demand=True)
                    log.info("model %s loads on demand (its first inference request loads it)", path.name)
                    continue
                try:  # (an ensemble has loaded its steps already)
                    await self.load(path.name, startup=True)
                except DeepserveError as exc:
                    log.error("model %s is UNAVAILABLE: %s", path.name, exc.message)

    async def aclose(self) -> None:
        for entry in self._entries.values():
            if entry.loading is not None and not entry.loading.done():
                entry.loading.cancel()
        for name in list(self._entries):
            await self.unload(name)

    # -- queries -------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedModel:
        entry = self._entries.get(name)
        if entry is None:
            check_model_name(name)  # a clear 400 for a name that can never be a model
            raise ModelNotFound(f"unknown model '{name}'")
        if not entry.versions:
            raise Unavailable(
                f"model '{name}' is not ready ({entry.state}{': ' + entry.reason if entry.reason else ''})",
                LOADING_RETRY_AFTER_S if entry.on_demand else None,
            )
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

    async def acquire(self, name: str, version: str = "") -> LoadedModel:
        """:meth:`get` for an inference: loads an on-demand model that is not loaded (and
        the on-demand steps of an ensemble), then holds the version until :meth:`release`
        (an unload waits for it). Raises Unavailable (503, Retry-After) when the load does
        not finish within ``on_demand_load_timeout_s``, or with the load's failure."""
        deadline = asyncio.get_running_loop().time() + self.on_demand_load_timeout_s
        while True:
            entry = await self._ensure_loaded(name, deadline)
            try:
                model = self.get(name, version)
            except Unavailable:
                # evicted or unloaded again before this request took it: load again, in time
                if entry is None or not entry.on_demand or entry.versions and not self._on_demand_steps(entry):
                    raise
                continue
            finally:
                if entry is not None:
                    entry.waiters -= 1
            model.refs += 1
            if entry is not None:
                entry.last_used = next(self._clock)
            return model

    def release(self, model: LoadedModel) -> None:
        """The request that :meth:`acquire` d ``model`` is answered."""
        model.refs -= 1
        if model.refs <= 0 and model.released is not None:
            model.released.set()

    def start_on_demand_load(self, name: str) -> None:
        """Begin loading an on-demand model that is not loaded (a metadata request: the
        routes that read metadata first answer 503 with Retry-After until it is loaded)."""
        entry = self._entries.get(name)
        if entry is not None and entry.on_demand and not entry.versions:
            self._on_demand_task(entry)

    async def _ensure_loaded(self, name: str, deadline: float) -> ModelEntry | None:
        """The model's entry, loaded when it is an on-demand one (with its waiter counted:
        the caller takes it down), its on-demand ensemble steps too."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        entry.waiters += 1
        try:
            if entry.on_demand and not entry.versions:
                await self._wait_on_demand(entry, deadline)
            for step in self._on_demand_steps(entry):
                step_entry = self._entries[step]
                step_entry.waiters += 1
                try:
                    await self._wait_on_demand(step_entry, deadline)
                finally:
                    step_entry.waiters -= 1
        except BaseException:
            entry.waiters -= 1
            raise
        return entry

    def _on_demand_steps(self, entry: ModelEntry) -> list[str]:
        """The on-demand step models, not loaded, of the entry's latest ensemble version."""
        if not entry.versions:
            return []
        latest = entry.versions[max(entry.versions, key=int)]
        return [s for s in latest.steps if (e := self._entries.get(s)) is not None and e.on_demand and not e.versions]

    def _on_demand_task(self, entry: ModelEntry) -> asyncio.Task:
        task = entry.loading
        if task is None or task.done():
            task = entry.loading = asyncio.create_task(self._load_on_demand(entry.name), name=f"load {entry.name}")
            task.add_done_callback(_retrieve)
        return task

    async def _load_on_demand(self, name: str) -> None:
        log.info("loading model %s on demand", name)
        await self.load(name, on_demand=True)

    async def _wait_on_demand(self, entry: ModelEntry, deadline: float) -> None:
        """Wait for the one load every first request shares; each waiter gets its own
        error (a failure is answered to all of them, with the load's reason)."""
        task = self._on_demand_task(entry)
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(asyncio.shield(task), max(remaining, 0.0))
        except TimeoutError:
            raise Unavailable(
                f"model '{entry.name}' is loading on demand and was not ready within "
                f"{self.on_demand_load_timeout_s:g} s; retry", LOADING_RETRY_AFTER_S,
            ) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise  # this request was cancelled (its client left), not the load
            raise Unavailable(f"model '{entry.name}': its on-demand load was cancelled (the server is stopping)") from None
        except DeepserveError as exc:
            retry = exc.retry_after_s if isinstance(exc, Unavailable) else None
            raise Unavailable(f"model '{entry.name}' failed to load on demand: {exc.message}", retry) from None

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
        on_demand: bool = False,
    ) -> None:
        """(Re)load a model; ``config`` overrides the folder's, ``files`` replace its files.
        ``chain``: the ensembles whose loading asked for this one (to refuse cycles).
        ``startup``: the model is meant to be loaded (the repository scan), so it counts for
        readiness even when its load fails; a client's load counts once it succeeds.
        ``on_demand``: an inference asked for it: refused (Unavailable) when the memory
        budget cannot make room for it; other loads go over the budget with a warning."""
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
                await self._fit(entry, model_dir, on_demand)
                new = await self._load_versions(name, model_dir, config, chain, startup, on_demand)
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
            # on demand (evictable) only as the repository folder defines it: an evicted model
            # is loaded again from there
            entry.on_demand = config is None and not files and any(_on_demand(m.config) for m in new.values())
            entry.size_hint = sum(m.resident_bytes for m in new.values())
            entry.last_used = next(self._clock)
            await self._retire(old.values(), keep_series=set(new))
            if old_temp is not None:
                shutil.rmtree(old_temp, ignore_errors=True)
            if not await self._make_room(0, name):
                log.warning("memory budget: %d bytes resident after loading %s, over the %d-byte budget "
                            "(nothing idle and evictable is left)", self.resident_bytes(), name, self.memory_budget_bytes)

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
            steps = await self._unload_entry(entry, ON_DEMAND_REASON if entry.on_demand else "unloaded")
        if unload_dependents:
            still_used = {step for model in self.models() for step in model.steps}
            for step in sorted(steps - still_used):
                await self.unload(step, unload_dependents=True)

    async def _unload_entry(self, entry: ModelEntry, reason: str) -> set[str]:
        """Unload under ``entry.lock`` (held by the caller): new requests find no version
        (503, or an on-demand load that waits for this lock); the requests holding a
        version finish first. Returns the step models of its ensembles."""
        steps = {step for model in entry.versions.values() for step in model.steps}
        entry.state = UNLOADING
        old, entry.versions = entry.versions, {}
        await self._retire(old.values())
        entry.state, entry.reason, entry.failure, entry.counted = UNAVAILABLE, reason, "", False
        if entry.temp_dir is not None:
            shutil.rmtree(entry.temp_dir, ignore_errors=True)
            entry.temp_dir = None
        return steps

    # -- residency -------------------------------------------------------------------

    def resident_bytes(self) -> int:
        """The measured size of every loaded model version (RSS deltas across their loads)."""
        return sum(m.resident_bytes for m in self.models())

    async def _fit(self, entry: ModelEntry, model_dir: Path, on_demand: bool) -> None:
        """Make room under the memory budget for the model about to load: its size at its
        last load, else its files' size."""
        if not self.memory_budget_bytes:
            return
        need = entry.size_hint or await asyncio.to_thread(_folder_bytes, model_dir)
        if await self._make_room(need, entry.name):
            return
        message = (
            f"the memory budget ({self.memory_budget_bytes} bytes) cannot take model '{entry.name}' "
            f"(about {need} bytes) now: {self.resident_bytes()} bytes are resident in models that are "
            "busy or not evictable"
        )
        if on_demand:
            raise Unavailable(message, LOADING_RETRY_AFTER_S)
        log.warning("%s; loading it anyway (an explicit or startup load)", message)

    async def _make_room(self, need: int, loading: str) -> bool:
        """Evict least recently used idle models until ``need`` more bytes fit the budget;
        False when they cannot (nothing idle and evictable is left)."""
        if not self.memory_budget_bytes:
            return True
        async with self._room:
            while self.resident_bytes() + need > self.memory_budget_bytes:
                victim = self._eviction_candidate(loading)
                if victim is None:
                    return False
                size = sum(m.resident_bytes for m in victim.versions.values())
                log.info("memory budget: evicting %s (%d bytes, least recently used idle model) to load %s",
                         victim.name, size, loading)
                async with victim.lock:  # free at the check, so taken at once (no wait)
                    await self._unload_entry(victim, EVICTED_REASON)
        return True

    def _eviction_candidate(self, loading: str) -> ModelEntry | None:
        """The least recently used model that may be evicted: loaded on demand, idle (no
        request holds it, none in flight, no request waiting to take it), not a step of a
        loaded ensemble nor of one being loaded, not being loaded or unloaded."""
        pinned = {step for model in self.models() for step in model.steps} | set(self._step_pins)
        candidates = [
            e for e in self._entries.values()
            if e.versions and e.on_demand and e.name != loading and e.name not in pinned
            and not e.lock.locked() and e.waiters == 0
            and all(m.refs == 0 and m.telemetry.inflight == 0 for m in e.versions.values())
        ]
        return min(candidates, key=lambda e: e.last_used, default=None)

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
        self, name: str, model_dir: Path, override: ModelConfig | None, chain: tuple[str, ...], startup: bool = False,
        on_demand: bool = False,
    ) -> dict[str, LoadedModel]:
        try:
            return await self._build_versions(name, model_dir, override, chain, startup, on_demand)
        except DeepserveError as exc:
            text = _scrub(exc.message, model_dir, self.root)
            if text == exc.message:
                raise
            raise _with_message(exc, text) from None
        except Exception as exc:  # e.g. an unreadable config file
            raise InvalidInput(_scrub(f"model '{name}' failed to load: {exc!r}", model_dir, self.root)) from exc

    async def _build_versions(
        self, name: str, model_dir: Path, override: ModelConfig | None, chain: tuple[str, ...], startup: bool,
        on_demand: bool = False,
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
                    await self._load_steps(model, (*chain, name), startup, on_demand)
                elif is_transcriber(config):  # its network is a step, loaded (and checked) like an ensemble's
                    model = load_transcriber(name, version, model_dir, config, self.options, telemetry, self.get)
                    await self._load_steps(model, (*chain, name), startup, on_demand)
                else:
                    loader = (load_generation if is_generation(config, model_dir)
                              else load_diffusion if is_diffusion(config) else load_version)
                    async with self._measure:  # nothing else loads between the two readings
                        host, device = _rss_bytes(), _device_bytes()
                        model = await asyncio.to_thread(loader, name, version, model_dir, config, self.options, telemetry)
                        model.resident_bytes = max(_rss_bytes() - host, 0)
                        model.device_bytes = max(_device_bytes() - device, 0)
                model.scheduler.start()
                loaded[version] = model
                telemetry.metrics.load_s.set(time.perf_counter() - started)
                telemetry.metrics.resident.set(model.resident_bytes)
                telemetry.stats.memory_usage = [
                    {"type": kind, "id": 0, "byte_size": size}
                    for kind, size in (("CPU", model.resident_bytes), ("GPU", model.device_bytes)) if size
                ]
                log.info("loaded %s version %s (%d instance(s), resident +%.1f MB%s)", name, version, len(model.instances),
                         model.resident_bytes / 1e6, f", device +{model.device_bytes / 1e6:.1f} MB" if model.device_bytes else "")
        except Exception as exc:
            await self._retire(loaded.values())
            if isinstance(exc, DeepserveError):
                raise
            raise InvalidInput(f"model '{name}' failed to load: {exc!r}") from exc
        return loaded

    async def _load_steps(
        self, ensemble: LoadedModel, chain: tuple[str, ...], startup: bool = False, on_demand: bool = False
    ) -> None:
        """Load the step models that are not loaded yet, then check the ensemble's wiring.
        Its steps are not evictable meanwhile (the budget would evict one to load the next)."""
        for step in ensemble.steps:
            self._step_pins[step] = self._step_pins.get(step, 0) + 1
        try:
            for step in ensemble.steps:
                if step in chain:
                    raise InvalidInput(f"ensemble '{chain[0]}' includes itself through {' -> '.join((*chain, step))}")
                entry = self._entries.get(step)
                if entry is not None and entry.versions:
                    continue
                try:
                    await self.load(step, chain=chain, startup=startup, on_demand=on_demand)
                except DeepserveError as exc:
                    error = Unavailable if isinstance(exc, Unavailable) and on_demand else InvalidInput
                    raise error(f"ensemble '{ensemble.name}': step model '{step}' failed to load: {exc.message}") from None
            check_wiring(ensemble, self.get)
        finally:
            for step in ensemble.steps:
                self._step_pins[step] -= 1
                if not self._step_pins[step]:
                    del self._step_pins[step]

    async def _retire(self, models, keep_series: set[str] = frozenset()) -> None:
        """Let queued and running requests finish, then free the runtimes.

        ``keep_series``: versions whose metric series the replacing load still uses.
        """
        for model in list(models):
            while model.refs > 0:  # requests that took this version are answered first
                model.released = asyncio.Event()
                await model.released.wait()
            await model.scheduler.aclose()
            await asyncio.to_thread(_free, model)
            if model.version not in keep_series:
                self.metrics.forget(model.name, model.version)


def _on_demand(config: ModelConfig | None) -> bool:
    parameter = config.parameters.get(ON_DEMAND_PARAMETER) if config is not None else None
    return parameter is not None and parameter.string_value.strip().lower() in ("true", "1", "yes", "on")


def _marked_on_demand(model_dir: Path) -> bool:
    """Whether the folder's config marks the model load-on-demand (a config that does not
    read is not: its load reports why)."""
    try:
        return _on_demand(read_config(model_dir))
    except Exception:
        return False


def _folder_bytes(folder: Path) -> int:
    """The size of a model's files: the estimate of a model never loaded before."""
    total = 0
    for path, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(path, name)).st_size
            except OSError:
                pass
    return total


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    """The process's resident set (Linux ``/proc/self/statm``; 0 elsewhere: no budget)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_nvml = None  # pynvml once initialized; False where there is no NVML


def _device_bytes() -> int:
    """This process's GPU memory, all devices (NVML; 0 without a GPU or pynvml, or where
    NVML cannot see the process's pid, as in some containers). Unverified on a GPU host."""
    global _nvml
    if _nvml is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        except Exception:
            _nvml = False
    if not _nvml:
        return 0
    total, pid = 0, os.getpid()
    try:
        for index in range(_nvml.nvmlDeviceGetCount()):
            handle = _nvml.nvmlDeviceGetHandleByIndex(index)
            for process in _nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid and process.usedGpuMemory:
                    total += process.usedGpuMemory
    except Exception:
        return 0
    return total


def _free(model: LoadedModel) -> None:
    """Free the runtimes, then hand the freed heap back to the system (glibc keeps freed
    memory mapped otherwise, and the RSS would not drop)."""
    model.unload_instances()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _retrieve(task: asyncio.Task) -> None:
    """An on-demand load whose waiters all gave up: its failure is not an unhandled error."""
    if not task.cancelled():
        task.exception()


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
