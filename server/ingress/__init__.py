"""The multi-process ingress (``--frontend-processes N``): N HTTP frontend processes hand
requests to the model process over a Unix socket, tensors in shared memory.

- ``ipc``: framing, the shared-memory arenas, requests / responses as header + arena bytes
- ``model_side``: the model process (IPC server, frontend supervision, the drain)
- ``remote``: ``RemoteInferenceService``, the ``InferenceService`` a frontend process calls
- ``frontend``: a frontend process's entry point
"""
