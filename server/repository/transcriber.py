"""Loading a transcription model: audio file bytes in, text out, over an acoustic network.

The config selects it with ``backend: "transcription"``; it has no model file of its own (a
version folder is optional, as for an ensemble). Its ``network`` parameter names the
acoustic model in the same repository (loaded first, like an ensemble's steps; the
transcription model is READY only while it is). Parameters (strings):

=====================  ==================================================================
``network``            the acoustic model: features (batch, time, mels) -> logits
                       (batch, frames, characters); required
``network_version``    default: its latest
``input`` / ``output`` the network's tensor names (default ``features`` / ``logits``)
``alphabet``           the characters the network scores, index 0 the CTC blank; required
``sample_rate``        the network's audio rate (default 16000)
``vocabulary``         a file in the model folder, one word per line: beam search keeps to it
``beam_width``         the default decoder: 0 greedy (default), > 0 beam search
``oov_penalty``        beam search: the log-domain cost of a word outside the vocabulary
                       (default -6; <= 0)
``max_chunk_seconds``  the longest chunk (default 15), ``silence_duration_ms``, ``threshold``,
                       ``prefix_padding_ms``: the silence splitter's defaults
``pad_seconds``        chunk features are padded to a multiple of this (default 2.5)
``max_inflight_chunks``  per request (default 2), ``max_requests`` at once (default 64)
``stage_threads``      threads computing chunks' features and CTC decoding, first chunks of
                       recordings first (default: half of ``--cpu-threads``, or of the cores;
                       at least 1)
``max_audio_seconds``  the longest recording taken (default 3600)
=====================  ==================================================================

Request tensors: ``audio`` (BYTES [1], the file) and optionally ``beam_width`` (INT32 [1])
and ``chunking`` (BYTES [1], JSON of OpenAI's ``chunking_strategy``); outputs ``text`` and
``transcript`` (JSON: duration, words with times and confidences, chunk bounds). With
``model_transaction_policy { decoupled: true }`` the model streams one response per chunk,
then the whole transcript.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from server.core.errors import InvalidInput
from server.observability.stats import ModelTelemetry
from server.pipelines import audio
from server.repository.config import ModelConfig, complete_io, datatype_enum, parameters, tensor_specs
from server.repository.loaded import LoadedModel
from server.repository.model import TRANSCRIPTION, LoadOptions, file_in_model, shown_path
from server.scheduling.transcription import AUDIO_INPUT, OUTPUTS, REQUEST_OPTIONS, Transcriber, TranscriberConfig


def is_transcriber(config: ModelConfig | None) -> bool:
    return config is not None and config.backend == TRANSCRIPTION


def load_transcriber(name: str, version: str, model_dir: Path, config: ModelConfig, options: LoadOptions,
                     telemetry: ModelTelemetry, resolve) -> LoadedModel:
    """Build the scheduler from the config; the network is loaded by the repository (``steps``)."""
    where = f"transcription model '{name}'"
    if config.name and config.name != name:
        raise InvalidInput(f"config name '{config.name}' does not match the model folder '{name}'")
    if config.max_batch_size:
        raise InvalidInput(f"{where} takes one recording per request (max_batch_size: 0); its chunks are batched "
                           "by the network's own dynamic batcher")
    try:
        settings = transcriber_config(parameters(config), model_dir, options.cores)
    except (InvalidInput, ValueError) as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    completed = _complete(config, name)
    inputs, outputs = tensor_specs(completed)
    scheduler = Transcriber(settings, resolve, telemetry)
    return LoadedModel(name, version, completed, inputs, outputs, {}, telemetry, scheduler, steps=(settings.network,))


def transcriber_config(p: dict[str, str], model_dir: Path, cores: int | None = None) -> TranscriberConfig:
    """The scheduler's settings from the config's parameters; ``cores``: those the server's
    runtimes may use (``--cpu-threads``, default all), half of which compute chunk stages."""
    if not p.get("network"):
        raise InvalidInput("the 'network' parameter must name the acoustic model")
    if len(p.get("alphabet", "")) < 2:
        raise InvalidInput("the 'alphabet' parameter must list the network's characters, the CTC blank first")
    vocabulary = None
    if p.get("vocabulary"):
        path = file_in_model(model_dir, model_dir, p["vocabulary"], "vocabulary")
        if not path.is_file():
            raise InvalidInput(f"vocabulary file {shown_path(path, model_dir)} does not exist")
        vocabulary = frozenset(w.strip() for w in path.read_text().splitlines() if w.strip())
    defaults = TranscriberConfig(network=p["network"])
    oov_penalty = float(p.get("oov_penalty", defaults.oov_penalty))
    if not oov_penalty <= 0:
        raise InvalidInput(f"the 'oov_penalty' parameter must be <= 0 (a log-domain cost), got {oov_penalty}")
    chunking = audio.chunk_policy_from({k: v for k, v in p.items() if k in CHUNK_KEYS}, defaults.chunking)
    limits = replace(defaults.limits, max_seconds=float(p.get("max_audio_seconds", defaults.limits.max_seconds)))
    return TranscriberConfig(
        network=p["network"],
        network_version=p.get("network_version", ""),
        input_name=p.get("input", defaults.input_name),
        output_name=p.get("output", defaults.output_name),
        alphabet=p["alphabet"],
        sample_rate=int(p.get("sample_rate", defaults.sample_rate)),
        chunking=chunking,
        pad_seconds=float(p.get("pad_seconds", defaults.pad_seconds)),
        default_beam_width=int(p.get("beam_width", defaults.default_beam_width)),
        vocabulary=vocabulary,
        oov_penalty=oov_penalty,
        max_inflight_chunks=max(1, int(p.get("max_inflight_chunks", defaults.max_inflight_chunks))),
        stage_threads=int(p.get("stage_threads", 0)) or max(1, (cores or os.cpu_count() or 1) // 2),
        max_requests=max(1, int(p.get("max_requests", defaults.max_requests))),
        limits=limits,
    )


CHUNK_KEYS = frozenset({"max_chunk_seconds", "silence_duration_ms", "threshold", "prefix_padding_ms"})


def _complete(config: ModelConfig, name: str) -> ModelConfig:
    """The request-facing tensors: filled in when the config leaves them out, checked when
    it declares them."""
    canonical_in = [mc.ModelInput(name=AUDIO_INPUT, data_type=datatype_enum("BYTES"), dims=[1])]
    canonical_in += [mc.ModelInput(name=n, data_type=datatype_enum(d), dims=[1], optional=True)
                     for n, d in REQUEST_OPTIONS.items()]
    canonical_out = [mc.ModelOutput(name=n, data_type=datatype_enum(d), dims=[1]) for n, d in OUTPUTS.items()]
    out = complete_io(config, name, canonical_in, canonical_out, "a transcription model")
    if AUDIO_INPUT not in {t.name for t in out.input}:
        raise InvalidInput(f"config input '{AUDIO_INPUT}' is required: it carries the audio file")
    return out
