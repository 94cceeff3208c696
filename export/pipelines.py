"""Repository entries around a network: Python pre/post-processing steps and the ensemble
that chains them, written as plain Triton configs (``config.pbtxt``).

``write_classify_pipeline`` serves any classification network from image bytes;
``write_detect_pipeline`` any CenterNet-style detector (``detect.centernet``'s contract);
``write_latent_generator`` any class-conditional decoder ``image = f(z, label)`` (a VAE's);
``diffusion_entry`` is the config of a noise-predicting network behind the step sampler.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from export.repository import EntryConfig


@dataclass(frozen=True)
class ImagePreprocess:
    """Parameters of ``image.decode_resize`` (or another image processor)."""

    processor: str = "image.decode_resize"
    dims: tuple[int, ...] = (3, 224, 224)  # the network's input, without the batch
    parameters: dict[str, str] = field(default_factory=dict)


def _parameters(values: dict[str, str]) -> str:
    return ",\n  ".join(f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def _dims(dims) -> str:
    return ", ".join(str(d) for d in dims)


def _write(repo: Path, name: str, text: str) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text.strip() + "\n")
    return folder


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'{{ model_name: "{model}" model_version: -1\n      ' + "\n      ".join(maps) + " }"


def _python(name: str, inputs: list[str], outputs: list[str], parameters: dict[str, str], instances: int = 1) -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 64
input [ {", ".join(inputs)} ]
output [ {", ".join(outputs)} ]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
parameters [
  {_parameters(parameters)}
]
"""


def write_classify_pipeline(
    repo: Path, name: str, network: str, network_io: tuple[str, str], classes: int, labels: Path,
    preprocess: ImagePreprocess, top_k: int = 5,
) -> None:
    """``name`` (task classify): IMAGE -> ``name``_pre -> ``network`` -> ``name``_topk -> LABELS, SCORES, INDICES."""
    k = min(top_k, classes)
    pre, post = f"{name}_pre", f"{name}_topk"
    _write(repo, pre, _python(
        pre, ['{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }'],
        [f'{{ name: "PIXELS" data_type: TYPE_FP32 dims: [ {_dims(preprocess.dims)} ] }}'],
        {"processor": preprocess.processor, **preprocess.parameters}, instances=2,
    ))
    folder = _write(repo, post, _python(
        post, [f'{{ name: "SCORES_IN" data_type: TYPE_FP32 dims: [ {classes} ] }}'],
        [f'{{ name: "LABELS" data_type: TYPE_STRING dims: [ {k} ] }}', f'{{ name: "SCORES" data_type: TYPE_FP32 dims: [ {k} ] }}',
         f'{{ name: "INDICES" data_type: TYPE_INT32 dims: [ {k} ] }}'],
        {"processor": "classify.topk", "k": str(k), "labels": "labels.txt"},
    ))
    shutil.copy(labels, folder / "1" / "labels.txt")
    net_in, net_out = network_io
    steps = ",\n    ".join([
        _step(pre, {"IMAGE": "IMAGE"}, {"PIXELS": "pixels"}),
        _step(network, {net_in: "pixels"}, {net_out: "scores"}),
        _step(post, {"SCORES_IN": "scores"}, {"LABELS": "LABELS", "SCORES": "SCORES", "INDICES": "INDICES"}),
    ])
    _write(repo, name, f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 64
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "LABELS" data_type: TYPE_STRING dims: [ {k} ] }},
  {{ name: "SCORES" data_type: TYPE_FP32 dims: [ {k} ] }},
  {{ name: "INDICES" data_type: TYPE_INT32 dims: [ {k} ] }}
]
ensemble_scheduling {{
  step [
    {steps}
  ]
}}
parameters [ {{ key: "task" value: {{ string_value: "classify" }} }} ]
""")


def write_detect_pipeline(
    repo: Path, name: str, network: str, input_size: int, labels: tuple[str, ...],
    network_io: tuple[str, tuple[str, str, str]] = ("image", ("heatmap", "size", "offset")),
    stride: int = 4, score_threshold: float = 0.3, max_detections: int = 100,
) -> None:
    """``name`` (task detect): IMAGE -> letterbox (``name``_pre) -> ``network`` -> ``name``_post
    (``detect.centernet``) -> boxes in the original pixels, scores, labels, count, transform."""
    pre, post = f"{name}_pre", f"{name}_post"
    cells, classes, k = input_size // stride, len(labels), max_detections
    _write(repo, pre, _python(
        pre, ['{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }'],
        [f'{{ name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, {input_size}, {input_size} ] }}',
         '{ name: "TRANSFORM" data_type: TYPE_FP32 dims: [ 6 ] }'],
        {"processor": "image.decode_resize", "height": str(input_size), "width": str(input_size), "resize": "letterbox"},
        instances=2,
    ))
    maps = [f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {c}, {cells}, {cells} ] }}' for n, c in
            (("heatmap", classes), ("size", 2), ("offset", 2))]
    options = ['{ name: "score_threshold" data_type: TYPE_FP32 dims: [ 1 ] optional: true }',
               '{ name: "iou_threshold" data_type: TYPE_FP32 dims: [ 1 ] optional: true }',
               '{ name: "max_detections" data_type: TYPE_INT32 dims: [ 1 ] optional: true }']
    outputs = [f'{{ name: "boxes" data_type: TYPE_FP32 dims: [ {k}, 4 ] }}', f'{{ name: "scores" data_type: TYPE_FP32 dims: [ {k} ] }}',
               f'{{ name: "labels" data_type: TYPE_STRING dims: [ {k} ] }}', '{ name: "count" data_type: TYPE_INT32 dims: [ 1 ] }']
    folder = _write(repo, post, _python(
        post, [*maps, '{ name: "transform" data_type: TYPE_FP32 dims: [ 6 ] }', *options], outputs,
        {"processor": "detect.centernet", "stride": str(stride), "score_threshold": str(score_threshold),
         "max_detections": str(k), "labels": "labels.txt"},
    ))
    (folder / "1" / "labels.txt").write_text("\n".join(labels) + "\n")
    net_in, (heat, size, offset) = network_io
    option_map = {o: o for o in ("score_threshold", "iou_threshold", "max_detections")}
    steps = ",\n    ".join([
        _step(pre, {"IMAGE": "IMAGE"}, {"PIXELS": "pixels", "TRANSFORM": "transform"}),
        _step(network, {net_in: "pixels"}, {heat: "heatmap", size: "size", offset: "offset"}),
        _step(post, {"heatmap": "heatmap", "size": "size", "offset": "offset", "transform": "transform", **option_map},
              {"boxes": "boxes", "scores": "scores", "labels": "labels", "count": "count"}),
    ])
    joined_options, joined_outputs = ",\n  ".join(options), ",\n  ".join(outputs)
    _write(repo, name, f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 64
input [
  {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }},
  {joined_options}
]
output [
  {joined_outputs},
  {{ name: "transform" data_type: TYPE_FP32 dims: [ 6 ] }}
]
ensemble_scheduling {{
  step [
    {steps}
  ]
}}
parameters [ {{ key: "task" value: {{ string_value: "detect" }} }} ]
""")


def write_latent_generator(repo: Path, name: str, decoder: str, latent_dim: int, image_dims: tuple[int, ...],
                           decoder_io: tuple[str, str, str] = ("z", "label", "image"), classes: int = 10) -> None:
    """``name`` (task image_generation): label, seed -> ``name``_latent (``generate.latent``:
    z ~ N(0, I) from the seed) -> ``decoder`` -> image in [0, 1]."""
    latent = f"{name}_latent"
    request_inputs = ['{ name: "label" data_type: TYPE_INT32 dims: [ 1 ] }',
                      '{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] optional: true }']
    _write(repo, latent, _python(
        latent, request_inputs,
        [f'{{ name: "z" data_type: TYPE_FP32 dims: [ {latent_dim} ] }}', '{ name: "class" data_type: TYPE_INT64 dims: [ ] }'],
        {"processor": "generate.latent", "latent_dim": str(latent_dim), "classes": str(classes)},
    ))
    z_in, label_in, image_out = decoder_io
    steps = ",\n    ".join([
        _step(latent, {"label": "label", "seed": "seed"}, {"z": "z", "class": "class"}),
        _step(decoder, {z_in: "z", label_in: "class"}, {image_out: "image"}),
    ])
    _write(repo, name, f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 64
input [ {", ".join(request_inputs)} ]
output [ {{ name: "image" data_type: TYPE_FP32 dims: [ {_dims(image_dims)} ] }} ]
ensemble_scheduling {{
  step [
    {steps}
  ]
}}
parameters [ {{ key: "task" value: {{ string_value: "image_generation" }} }} ]
""")


def diffusion_entry(name: str, schedule: dict[str, str], *, default_steps: int = 25, default_guidance: float = 2.0,
                    max_steps: int = 250, max_step_rows: int = 64, classes: int = 10, null_class: int = 10) -> EntryConfig:
    """The config of a diffusion model (``server.repository.sampler``): decoupled, one image
    per request, the request tensors left to the loader; ``schedule`` = train_steps,
    beta_start, beta_end as the network was trained."""
    return EntryConfig(
        name, inputs=(), outputs=(), max_batch_size=0, dynamic_batching=None, decoupled=True,
        parameters={
            "scheduler": "diffusion", "task": "image_generation", **schedule, "classes": str(classes),
            "null_class": str(null_class), "default_steps": str(default_steps),
            "default_guidance_scale": str(default_guidance), "max_steps": str(max_steps),
            "max_step_rows": str(max_step_rows),
        },
    )


def write_transcription(repo: Path, name: str, network: str, alphabet: str, vocabulary: Sequence[str] | None = None,
                        decoupled: bool = False, parameters: dict[str, str] | None = None) -> Path:
    """``name`` (task transcription, ``server.repository.transcriber``): audio file bytes ->
    text over the acoustic model ``network``; decoupled, it streams one response per chunk.
    ``vocabulary`` (the words beam search keeps to) is written beside the config."""
    values = {"task": "transcription", "network": network, "alphabet": alphabet, **(parameters or {})}
    if vocabulary is not None:
        values["vocabulary"] = "vocabulary.txt"
    policy = "model_transaction_policy { decoupled: true }\n" if decoupled else ""
    folder = _write(repo, name, f"""
name: "{name}"
backend: "transcription"
max_batch_size: 0
{policy}parameters [
  {_parameters(values)}
]
""")
    if vocabulary is not None:
        (folder / "vocabulary.txt").write_text("".join(f"{w}\n" for w in vocabulary))
    return folder
