"""A model repository of every model kind, for the integration tests (and
``loadtests/ensemble_overhead.py``)::

    digits             the default digits CNN (ONNX), dynamically batched
    digits_pt2         the same network as a torch.export program (backend pytorch)
    digits_preprocess  python, processor image.decode_resize: PNG bytes -> (1, 8, 8) in [0, 1]
    digits_topk        python, processor classify.topk: logits -> top-3 labels and scores
    image_size         python, processor image.size: PNG bytes -> (height, width)
    digits_pipeline    ensemble: IMAGE -> digits_preprocess -> digits -> digits_topk -> LABELS, SCORES
                                 IMAGE -> image_size -> SIZE            (one input, two steps)
    size_pipeline      ensemble: IMAGE -> image_size_b -> SIZE (its step is loaded and unloaded
    image_size_b                 under traffic by the tests)
    repeat             python, decoupled (model.py): IN repeated REPEAT times, DELAY_MS apart
    shout              python (model.py): BYTES text -> upper case, batched
    broken_import      python: model.py imports a module that does not exist
    broken_setup       python: setup() raises
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np

from tests.integration.server_fixtures import write_model

PREPROCESS = """
name: "digits_preprocess"
backend: "python"
max_batch_size: 64
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "PIXELS" data_type: TYPE_FP32 dims: [ 1, 8, 8 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 2 } ]
parameters [
  { key: "processor" value: { string_value: "image.decode_resize" } },
  { key: "color" value: { string_value: "L" } },
  { key: "height" value: { string_value: "8" } },
  { key: "width" value: { string_value: "8" } }
]
"""

TOPK = """
name: "digits_topk"
backend: "python"
max_batch_size: 64
input [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] } ]
output [ { name: "LABELS" data_type: TYPE_STRING dims: [ 3 ] }, { name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching { }
parameters [
  { key: "processor" value: { string_value: "classify.topk" } },
  { key: "k" value: { string_value: "3" } },
  { key: "labels" value: { string_value: "labels.txt" } }
]
"""

SIZE = """
name: "{name}"
backend: "python"
max_batch_size: 64
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "SIZE" data_type: TYPE_INT32 dims: [ 2 ] }} ]
dynamic_batching {{ }}
parameters [ {{ key: "processor" value: {{ string_value: "image.size" }} }} ]
"""

PIPELINE = """
name: "digits_pipeline"
platform: "ensemble"
max_batch_size: 64
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "LABELS" data_type: TYPE_STRING dims: [ 3 ] },
  { name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "SIZE" data_type: TYPE_INT32 dims: [ 2 ] }
]
ensemble_scheduling {
  step [
    { model_name: "digits_preprocess" model_version: -1
      input_map { key: "IMAGE" value: "IMAGE" } output_map { key: "PIXELS" value: "pixels" } },
    { model_name: "digits" model_version: -1
      input_map { key: "input" value: "pixels" } output_map { key: "logits" value: "logits" } },
    { model_name: "digits_topk" model_version: -1
      input_map { key: "LOGITS" value: "logits" }
      output_map [ { key: "LABELS" value: "LABELS" }, { key: "SCORES" value: "SCORES" } ] },
    { model_name: "image_size" model_version: -1
      input_map { key: "IMAGE" value: "IMAGE" } output_map { key: "SIZE" value: "SIZE" } }
  ]
}
"""

SIZE_PIPELINE = """
name: "size_pipeline"
platform: "ensemble"
max_batch_size: 64
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "SIZE" data_type: TYPE_INT32 dims: [ 2 ] } ]
ensemble_scheduling {
  step [ { model_name: "image_size_b" model_version: -1
           input_map { key: "IMAGE" value: "IMAGE" } output_map { key: "SIZE" value: "SIZE" } } ]
}
"""

REPEAT_CONFIG = """
name: "repeat"
backend: "python"
max_batch_size: 0
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "REPEAT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "DELAY_MS" data_type: TYPE_INT32 dims: [ 1 ] }
]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "IDX" data_type: TYPE_INT32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

REPEAT_MODEL = '''
import time

import numpy as np


class Repeat:
    """Decoupled: answers IN, REPEAT times, DELAY_MS apart (IDX counts the responses)."""

    def execute(self, inputs):
        value, count, delay_ms = (int(inputs[name][0]) for name in ("IN", "REPEAT", "DELAY_MS"))
        for index in range(count):
            if index:
                time.sleep(delay_ms / 1000)
            yield {"OUT": np.array([value], np.int32), "IDX": np.array([index], np.int32)}
'''

SHOUT_CONFIG = """
name: "shout"
backend: "python"
max_batch_size: 16
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "LOUD" data_type: TYPE_STRING dims: [ 1 ] } ]
dynamic_batching { }
"""

SHOUT_MODEL = '''
import numpy as np


class Shout:
    def setup(self, context):
        self.suffix = context.parameters.get("suffix", "!").encode()

    def execute(self, inputs):
        text = inputs["TEXT"]
        return {"LOUD": np.array([t.upper() + self.suffix for t in text.reshape(-1)], dtype=object).reshape(text.shape)}
'''

BROKEN_IMPORT = "import deepserve_no_such_module  # noqa\n\nclass M:\n    def execute(self, inputs):\n        return inputs\n"
BROKEN_SETUP = "class M:\n    def setup(self, context):\n        raise ValueError('bad parameter k')\n\n    def execute(self, inputs):\n        return inputs\n"
BROKEN_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
"""


def png(pixels: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a 2-D array of values in [0, 1]."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def digit_pngs(x: np.ndarray) -> list[bytes]:
    """Held-out digits (N, 1, 8, 8) in [0, 1] -> PNG bytes each."""
    return [png(image[0]) for image in x]


def pixels_from_png(data: bytes) -> np.ndarray:
    """What the pipeline's preprocessing computes: (1, 8, 8) float32 in [0, 1]."""
    from PIL import Image

    return (np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float32) / 255.0).reshape(1, 8, 8)


def write_torch_digits(repo: Path, name: str = "digits_pt2") -> None:
    """The digits CNN with the shipped weights as ``model.pt2``; the config names only the
    batching, the program's signature completes the tensors."""
    import torch

    from export.torch_program import write_torch_program
    from models import digits_cnn

    module = digits_cnn.load().eval()
    write_torch_program(module, (torch.zeros(2, 1, 8, 8),), repo / name / "1" / "model.pt2")
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "pytorch"\nmax_batch_size: 64\ndynamic_batching {{ }}\n')


def build_kinds_repository(repo: Path) -> Path:
    from export.default_repository import build_default_repository

    build_default_repository(repo)
    write_torch_digits(repo)
    write_model(repo, "digits_preprocess", PREPROCESS)
    write_model(repo, "digits_topk", TOPK)
    shutil.copy(repo / "digits" / "labels.txt", repo / "digits_topk" / "1" / "labels.txt")
    write_model(repo, "image_size", SIZE.format(name="image_size"))
    write_model(repo, "image_size_b", SIZE.format(name="image_size_b"))
    write_model(repo, "digits_pipeline", PIPELINE)
    write_model(repo, "size_pipeline", SIZE_PIPELINE)
    write_model(repo, "repeat", REPEAT_CONFIG, {"model.py": REPEAT_MODEL})
    write_model(repo, "shout", SHOUT_CONFIG, {"model.py": SHOUT_MODEL})
    write_model(repo, "broken_import", BROKEN_CONFIG.format(name="broken_import"), {"model.py": BROKEN_IMPORT})
    write_model(repo, "broken_setup", BROKEN_CONFIG.format(name="broken_setup"), {"model.py": BROKEN_SETUP})
    return repo
