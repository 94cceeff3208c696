"""``deepserve bench``: a perf_analyzer-style load sweep against any v2 server (HTTP JSON /
binary tensors or gRPC) and the ``/v1`` task and OpenAI routes.

Modules: :mod:`server.bench.inputs` (request tensors from model metadata or a file),
:mod:`server.bench.load` (the async closed / open loop generator and the statistics-extension
split), :mod:`server.bench.report` (table, CSV, JSON, PNG plots; matplotlib is imported only
there, only when plotting), :mod:`server.bench.cli` (the typer app mounted as ``bench``).
See docs/bench.md.
"""
