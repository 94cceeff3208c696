"""deepserve's own pipeline steps: Python models a config names instead of shipping a file.

``parameters { key: "processor" value: { string_value: "image.decode_resize" } }`` in a
``backend: "python"`` config selects one. Each is a class with the Python model hooks
(``setup(context)``, ``execute(inputs) -> outputs``); see :mod:`server.runtimes.python`.
Modules are imported only when a config names one of their steps.
"""

from __future__ import annotations

PROCESSORS: dict[str, str] = {
    "image.decode_resize": "server.pipelines.image:DecodeResize",
    "image.size": "server.pipelines.image:ImageSize",
    "image.digit": "server.pipelines.digits:Digit",
    "detect.centernet": "server.pipelines.detect:CenterNetDecode",
    "classify.topk": "server.pipelines.classify:TopK",
    "generate.latent": "server.pipelines.latent:Latent",
}
