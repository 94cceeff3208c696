"""The repository deepserve serves out of the box, and the benchmark repository.

Both builds are idempotent: an entry whose fingerprint (weights, export spec, config,
exporter versions) matches what is on disk is left alone unless ``force``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from export.families import Family, get_family
from export.onnx import export_onnx, ort_runner
from export.parity import ParityReport, check_elementwise
from export.pipelines import (
    ImagePreprocess,
    diffusion_entry,
    write_classify_pipeline,
    write_detect_pipeline,
    write_latent_generator,
    write_transcription,
)
from export.repository import (
    FINGERPRINT_KEY,
    DynamicBatching,
    EntryConfig,
    TensorConfig,
    config_text,
    fingerprint,
    is_up_to_date,
    model_config,
    tensors_from_onnx,
    write_entry,
)

log = logging.getLogger(__name__)


def export_family_entry(
    dest: Path,
    family: Family,
    name: str,
    *,
    batching: bool = True,
    weights: Path | None = None,
    version: int = 1,
    force: bool = False,
    entry: EntryConfig | None = None,
) -> ParityReport | None:
    """Write ``dest/name`` as the family's fp32 ONNX; None when already up to date.

    ``entry``: the config to write instead of the family's batched one (a diffusion
    model's, say); its tensors are written as given, not taken from the graph."""
    custom = entry is not None
    entry = entry or _entry_for(family, name, batching)
    print_ = fingerprint(family.weights_digest(weights), repr(family.spec), config_text(model_config(entry)),
                         torch.__version__, onnx.__version__)
    if not force and is_up_to_date(dest, name, print_, version):
        log.info("%s is up to date in %s", name, dest)
        return None
    module = family.build(weights)
    model = export_onnx(module, family.spec)
    held = family.held_out()[0] if family.held_out is not None else None
    report = check_elementwise("fp32", module, ort_runner(model, family.spec), family.spec, held)
    if not custom:
        inputs, outputs = tensors_from_onnx(model, labels_for=family.label_output if family.labels else None)
        entry = replace(entry, inputs=inputs, outputs=outputs)
    entry = replace(entry, parameters={**entry.parameters, FINGERPRINT_KEY: print_})
    write_entry(dest, entry, model.SerializeToString(), version=version, labels=None if custom else family.labels)
    log.info("wrote %s: %s", dest / name, report.summary())
    return report


_TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}  # IOSpec.dtype -> Triton's data_type


def _entry_for(family: Family, name: str, batching: bool) -> EntryConfig:
    spec = family.spec
    inputs = tuple(TensorConfig(i.name, _TRITON_TYPES[i.dtype], i.dims) for i in spec.inputs)
    outputs = tuple(TensorConfig(o.name, _TRITON_TYPES[o.dtype], o.dims, "labels.txt" if family.labels and o.name == family.label_output else None)
                    for o in spec.outputs)
    db = DynamicBatching(family.preferred_batch_size, family.max_queue_delay_us) if batching else None
    return EntryConfig(name, inputs, outputs, max_batch_size=family.max_batch_size, dynamic_batching=db)


def build_default_repository(dest: Path, *, force: bool = False) -> None:
    """``digits``: the trained digits CNN, fp32 ONNX, dynamically batched on one CPU instance;
    ``digits_classify``: the ensemble /v1/classify calls (any image of a digit -> top-k);
    ``shapes``: the shapes detector, fp32 ONNX; ``shapes_detect``: the ensemble /v1/detect calls;
    ``digits_vae`` (generate.latent -> ``digits_vae_decoder``) and ``digits_vae_encoder``;
    ``digits_diffusion``: the U-Net behind the step-level DDIM sampler; ``speech_ctc`` (the
    recognizer) behind ``speech`` and ``speech_stream`` (transcription, /v1/audio/transcriptions);
    ``textgen`` (text generation, /v1/completions and /v1/chat/completions)."""
    from models import shapes_detector

    dest = Path(dest)
    export_family_entry(dest, get_family("digits"), "digits", force=force)
    write_classify_pipeline(
        dest, "digits_classify", "digits", ("input", "logits"), classes=10, labels=dest / "digits" / "labels.txt",
        preprocess=ImagePreprocess("image.digit", (1, 8, 8)), top_k=10,
    )
    shapes = get_family("shapes")
    export_family_entry(dest, shapes, "shapes", force=force)
    write_detect_pipeline(dest, "shapes_detect", "shapes", shapes.spec.inputs[0].shape[-1], shapes_detector.LABELS)
    build_generative_entries(dest, force=force)
    build_speech_entries(dest, force=force)
    build_text_entries(dest, force=force)


TEXTGEN = Path(__file__).resolve().parents[1] / "models" / "weights" / "textgen"


def build_text_entries(dest: Path, *, force: bool = False) -> None:
    """``textgen``: the small GPT-2-style model (``models/gpt.py``, trained by
    ``models/train_gpt.py``), a Hugging Face checkpoint folder served as it is by the
    generation engine (no config.pbtxt: the engine's defaults)."""
    import shutil

    version = Path(dest) / "textgen" / "1"
    same = version.is_dir() and all(
        (version / f.name).is_file() and (version / f.name).read_bytes() == f.read_bytes() for f in TEXTGEN.iterdir()
    )
    if same and not force:
        return
    if version.exists():
        shutil.rmtree(version)
    shutil.copytree(TEXTGEN, version)


def build_speech_entries(dest: Path, *, force: bool = False) -> None:
    """The CTC recognizer (fp32 ONNX, dynamically batched: chunks of every request share
    batches) and the transcription models over it: ``speech`` answers once, ``speech_stream``
    (decoupled) once per chunk. They decode with beam search over the recognizer's vocabulary
    (``beam_width`` 0 in a request asks for greedy decoding)."""
    from models import speech_ctc, speech_text

    family = get_family("speech_ctc")
    # Two priority levels: the transcription model sends each recording's first chunk at level 1,
    # so a short request's only chunk goes ahead of a long recording's queued ones.
    # One ONNX Runtime thread: the LSTM's per-step products are too small for a second one, which
    # only took a core from the chunks' features and CTC decoding (docs/design.md, "Transcription").
    base = _entry_for(family, "speech_ctc", batching=True)
    entry = replace(base, dynamic_batching=DynamicBatching(family.preferred_batch_size, 2000, priority_levels=2),
                    parameters={**base.parameters, "intra_op_thread_count": "1"})
    export_family_entry(dest, family, "speech_ctc", entry=entry, force=force)
    vocabulary = speech_text.lexicon(speech_text.load_vocab())  # the words, the digits' names, the letters
    # what models/results/speech_ctc.json's "beam" figures measure
    decoder = {"beam_width": str(speech_ctc.BEAM_WIDTH), "oov_penalty": str(speech_ctc.OOV_PENALTY)}
    write_transcription(dest, "speech", "speech_ctc", speech_ctc.ALPHABET, vocabulary, parameters=decoder)
    write_transcription(dest, "speech_stream", "speech_ctc", speech_ctc.ALPHABET, vocabulary, decoupled=True,
                        parameters=decoder)


def build_generative_entries(dest: Path, *, force: bool = False) -> None:
    """The digits VAE (decoder behind a latent-sampling ensemble, encoder as an embedding
    model) and the diffusion U-Net behind the sampler, with the schedule it was trained on
    and the defaults the recipe measured (``models/results/digits_generation.json``)."""
    from models import checkpoint, digit_unet
    from models.eval_generation import DEFAULT_GUIDANCE, DEFAULT_STEPS

    decoder = get_family("digits_vae_decoder")
    export_family_entry(dest, decoder, "digits_vae_decoder", force=force)
    export_family_entry(dest, get_family("digits_vae_encoder"), "digits_vae_encoder", force=force)
    latent_dim = decoder.spec.inputs[0].shape[-1]
    write_latent_generator(dest, "digits_vae", "digits_vae_decoder", latent_dim, decoder.spec.outputs[0].shape[1:])
    config = digit_unet.config_from_metadata(checkpoint.metadata(digit_unet.WEIGHTS))
    schedule = {"train_steps": str(config.train_steps), "beta_start": str(config.beta_start), "beta_end": str(config.beta_end)}
    entry = diffusion_entry("digits_diffusion", schedule, default_steps=DEFAULT_STEPS,
                            default_guidance=DEFAULT_GUIDANCE)
    export_family_entry(dest, get_family("digits_unet"), "digits_diffusion", entry=entry, force=force)


def build_benchmark_repository(dest: Path, *, force: bool = False) -> None:
    """``resnet_bench``, ``mlp_tiny`` (dynamic batching) and their ``*_nobatch`` twins."""
    dest = Path(dest)
    for family_name, name in (("resnet_bench", "resnet_bench"), ("mlp_tiny", "mlp_tiny")):
        family = get_family(family_name)
        export_family_entry(dest, family, name, force=force)
        export_family_entry(dest, family, f"{name}_nobatch", batching=False, force=force)
