"""``classify.topk``: scores -> the top k classes of each row, with labels.

Parameters: ``k`` (default 1), ``softmax`` (``true``: the scores are logits; default
``true``), ``labels`` (a file in the version folder, one label per line; default: the
class index as text). Outputs are picked by datatype, in any order the config lists
them: a BYTES output gets the labels, an FP32 output the scores, an INT32/INT64 output
the class indices, each of shape (rows, k).
"""

from __future__ import annotations

import numpy as np

from server.core.datatypes import numpy_dtype
from server.runtimes.python import ModelContext


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class TopK:
    def setup(self, context: ModelContext) -> None:
        p = context.parameters
        self.k = int(p.get("k", 1))
        if self.k < 1:
            raise ValueError(f"k must be at least 1, not {self.k}")
        softmax = p.get("softmax", "true").lower()
        if softmax not in ("true", "false"):
            raise ValueError(f"softmax must be true or false, not '{softmax}'")
        self.softmax = softmax == "true"
        labels_file = p.get("labels", "")
        self.labels = (context.directory / labels_file).read_text().splitlines() if labels_file else None
        self.input = context.inputs[0].name
        self.outputs = {spec.name: spec.datatype for spec in context.outputs}

    def _label(self, index: int) -> bytes:
        return (self.labels[index] if self.labels and index < len(self.labels) else str(index)).encode()

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = inputs[self.input].astype(np.float32)
        scores = scores.reshape(scores.shape[0], -1)
        if self.softmax:
            scores = softmax(scores)
        k = min(self.k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1)
        out: dict[str, np.ndarray] = {}
        for name, datatype in self.outputs.items():
            if datatype == "BYTES":
                out[name] = np.array([[self._label(i) for i in row] for row in order], dtype=object).reshape(order.shape)
            elif datatype in ("INT32", "INT64"):
                out[name] = order.astype(numpy_dtype(datatype))
            else:
                out[name] = top.astype(numpy_dtype(datatype))
        return out
