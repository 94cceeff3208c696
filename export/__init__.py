"""From a trained torch network to verified, servable artifacts in a model repository.

The path, one module per phase:

    spec.py        what a model family exports as (names, dynamic axes, opset, tolerances)
    onnx.py        torch -> ONNX (checker, shape inference, simplification, ORT offline copy)
    quantize.py    INT8 dynamic, INT8 static QDQ (calibrated on real samples), FP16
    prune.py       unstructured magnitude and structured channel pruning (+ fine-tune)
    tensorrt.py    ONNX -> TensorRT engine (GPU only), engine and timing caches
    parity.py      every artifact checked against the torch model before it is written
    repository.py  Triton-layout entries: NAME/config.pbtxt, NAME/<version>/model.*
    variants.py    builds each variant of a family and checks it
    report.py      the variant table (size, params, FLOPs, latency, throughput, metric)
    families.py    the model families deepserve ships (digits, resnet_bench, mlp_tiny)
    cli.py         ``deepserve export ...`` and ``deepserve models ...``

Nothing here imports ``server.frontends``.
"""
