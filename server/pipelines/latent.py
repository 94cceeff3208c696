"""``generate.latent``: (label, seed) -> a generator's inputs ``z ~ N(0, I)`` and the label.

The first step of a latent-variable generator (the VAE's decoder follows it in an
ensemble). ``z`` is drawn from the row's own seed with :func:`server.pipelines.ddim.initial_noise`,
so the same seed gives the same image alone or batched; a request without ``seed`` gets a
random one. Parameters: ``latent_dim`` (required), ``classes`` (default 10).

Inputs: ``label`` INT32 (rows, 1), ``seed`` INT64 (rows, 1), optional. Outputs: ``z`` FP32
(rows, latent_dim) and ``class`` INT64 (rows,), the label as the network reads it.
"""

from __future__ import annotations

import numpy as np

from server.core.errors import InvalidInput
from server.pipelines.ddim import initial_noise
from server.runtimes.python import ModelContext


class Latent:
    def setup(self, context: ModelContext) -> None:
        p = context.parameters
        if "latent_dim" not in p:
            raise ValueError("generate.latent needs the parameter latent_dim")
        self.latent_dim = int(p["latent_dim"])
        self.classes = int(p.get("classes", 10))

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = inputs["label"].reshape(-1).astype(np.int64)
        bad = [int(v) for v in labels if not 0 <= v < self.classes]
        if bad:
            raise InvalidInput(f"label must be a class between 0 and {self.classes - 1}, not {bad[0]}")
        seeds = inputs.get("seed")
        if seeds is None:
            seeds = np.random.default_rng().integers(2**31, size=len(labels))
        seeds = seeds.reshape(-1)
        if (seeds < 0).any():
            raise InvalidInput("seed must be a non-negative integer")
        z = np.stack([initial_noise(int(s), (self.latent_dim,)) for s in seeds])
        return {"z": z, "class": labels}
