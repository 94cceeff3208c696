"""What the frontend processes and the model process share: message framing over a Unix
socket, the shared-memory arenas tensors travel in, and how a request / response is
split into a small header (on the socket) and array bytes (in an arena).

Framing: 4-byte little-endian length, then a pickle (protocol 5) of a tuple whose first
item is the message kind (see ``model_side`` and ``remote`` for the kinds).

Arenas: each frontend process has two segments, created by the model process before it
starts the frontend: the *request* arena (the frontend allocates and writes inputs, the
model process copies them out on receipt; the frontend frees them when the answer comes)
and the *response* arena (the model process allocates and writes outputs, the frontend
copies them out on receipt and tells the model process to free them, piggybacked on its
next message). An array that does not fit (or a BYTES / object array) travels inline in
the pickled header instead.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import pickle
import struct
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from server.core.types import InferenceRequest, InferenceResponse, OutputTensor

_LEN = struct.Struct("<I")
ALIGN = 64
# Each arena's size (bytes); an array larger than what is free goes inline on the socket.
ARENA_BYTES = int(os.environ.get("DEEPSERVE_INGRESS_ARENA_BYTES", str(32 * 1024 * 1024)))
# Arrays smaller than this go inline (a pickle of a few hundred bytes beats an allocation).
INLINE_BELOW = 0


def dumps(message: tuple) -> bytes:
    payload = pickle.dumps(message, protocol=5)
    return _LEN.pack(len(payload)) + payload


class Arena:
    """First-fit allocator over one shared-memory segment (only one process allocates in
    a given arena; the other side only reads or writes the bytes it is told about)."""

    def __init__(self, shm: SharedMemory) -> None:
        self.shm = shm
        self.size = shm.size
        self.buf = shm.buf
        self._offsets: list[int] = [0]  # free blocks, sorted by offset
        self._sizes: list[int] = [self.size]

    def alloc(self, nbytes: int) -> int | None:
        need = max(ALIGN, (nbytes + ALIGN - 1) // ALIGN * ALIGN)
        for i, size in enumerate(self._sizes):
            if size >= need:
                offset = self._offsets[i]
                if size == need:
                    del self._offsets[i], self._sizes[i]
                else:
                    self._offsets[i] += need
                    self._sizes[i] -= need
                return offset
        return None

    def free(self, offset: int, nbytes: int) -> None:
        size = max(ALIGN, (nbytes + ALIGN - 1) // ALIGN * ALIGN)
        i = bisect.bisect_left(self._offsets, offset)
        self._offsets.insert(i, offset)
        self._sizes.insert(i, size)
        if i + 1 < len(self._offsets) and offset + size == self._offsets[i + 1]:  # merge with the next
            self._sizes[i] += self._sizes.pop(i + 1)
            self._offsets.pop(i + 1)
        if i > 0 and self._offsets[i - 1] + self._sizes[i - 1] == offset:  # merge with the previous
            self._sizes[i - 1] += self._sizes.pop(i)
            self._offsets.pop(i)

    @property
    def free_bytes(self) -> int:
        return sum(self._sizes)

    def put(self, array: np.ndarray) -> tuple | None:
        """Copy ``array`` in: (dtype, shape, offset, nbytes), or None when it must go inline."""
        if array.dtype.hasobject or array.nbytes < INLINE_BELOW:
            return None
        offset = self.alloc(array.nbytes)
        if offset is None:
            return None
        view = np.ndarray(array.shape, array.dtype, self.buf, offset)
        np.copyto(view, array, casting="no")
        return array.dtype.str, array.shape, offset, array.nbytes

    def take(self, dtype: str, shape: tuple, offset: int) -> np.ndarray:
        """A private copy of an array the other side wrote."""
        return np.ndarray(shape, np.dtype(dtype), self.buf, offset).copy()

    def close(self) -> None:
        self.buf = None
        try:
            self.shm.close()
        except BufferError:  # a view still alive: the segment goes with the process
            pass


def create_segment(size: int = ARENA_BYTES) -> SharedMemory:
    return SharedMemory(create=True, size=size)


def attach_segment(name: str) -> SharedMemory:
    """Open a segment the model process created. A spawned frontend shares the model
    process's resource tracker, so the (Python < 3.13) registration of this attach is the
    creator's one again: the model process unlinks it at exit, the tracker if it is killed."""
    return SharedMemory(name=name)


# -- requests and responses as (header, arena bytes) --------------------------------------


def pack_tensors(arrays: dict[str, np.ndarray], arena: Arena | None, placed: list[tuple[int, int]]) -> list[tuple]:
    """Each array as (name, dtype, shape, offset, nbytes) in ``arena`` or (name, array) inline;
    the regions taken are appended to ``placed``."""
    out: list[tuple] = []
    for name, array in arrays.items():
        where = arena.put(array) if arena is not None and isinstance(array, np.ndarray) else None
        if where is None:
            out.append((name, array))
        else:
            out.append((name, *where))
            placed.append((where[2], where[3]))
    return out


def unpack_tensors(items: list[tuple], arena: Arena) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for item in items:
        if len(item) == 2:
            arrays[item[0]] = item[1]
        else:
            name, dtype, shape, offset, _ = item
            arrays[name] = arena.take(dtype, shape, offset)
    return arrays


def request_header(request: InferenceRequest, arena: Arena, placed: list[tuple[int, int]]) -> tuple:
    return (
        request.model_name, request.model_version, request.id, request.outputs, request.parameters,
        request.datatypes, request.deadline_s, pack_tensors(request.inputs, arena, placed),
    )


def request_from(header: tuple, arena: Arena) -> InferenceRequest:
    name, version, rid, outputs, parameters, datatypes, deadline, tensors = header
    return InferenceRequest(name, unpack_tensors(tensors, arena), version, rid, outputs, parameters, datatypes, deadline)


def response_header(response: InferenceResponse, arena: Arena, placed: list[tuple[int, int]]) -> tuple:
    items = []
    for tensor in response.outputs:
        where = arena.put(tensor.data) if isinstance(tensor.data, np.ndarray) else None
        if where is None:
            items.append((tensor.name, tensor.datatype, tensor.binary, tensor.data))
        else:
            items.append((tensor.name, tensor.datatype, tensor.binary, *where))
            placed.append((where[2], where[3]))
    return response.model_name, response.model_version, response.id, response.parameters, items


def response_from(header: tuple, arena: Arena, release: list[tuple[int, int]]) -> InferenceResponse:
    """The response, its arrays copied out of the arena; their regions go to ``release``."""
    name, version, rid, parameters, items = header
    outputs = []
    for item in items:
        if len(item) == 4:
            outputs.append(OutputTensor(item[0], item[1], item[3], item[2]))
        else:
            tname, datatype, binary, dtype, shape, offset, nbytes = item
            outputs.append(OutputTensor(tname, datatype, arena.take(dtype, shape, offset), binary))
            release.append((offset, nbytes))
    return InferenceResponse(name, version, outputs, rid, parameters)


class Connection(asyncio.Protocol):
    """One framed, pickled message stream over a Unix socket; ``on_message(message)`` is
    called for each message received, ``on_lost(exc)`` once when the peer goes away."""

    def __init__(self, on_message: Callable[[tuple], None], on_lost: Callable[[Exception | None], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (length,) = _LEN.unpack_from(buffer, start)
            if end - start - 4 < length:
                break
            message = pickle.loads(buffer[start + 4:start + 4 + length])
            start += 4 + length
            self.on_message(message)
        if start:
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost(exc)

    def send(self, message: tuple) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(dumps(message))


def send_blocking(sock, message: tuple) -> None:
    sock.sendall(dumps(message))


def recv_blocking(sock) -> Any:
    head = _recv_exact(sock, 4)
    (length,) = _LEN.unpack(head)
    return pickle.loads(_recv_exact(sock, length))


def _recv_exact(sock, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the model process closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
