"""The model families deepserve ships: how to build each network, its export spec,
its repository defaults and its data (held-out for metrics, samples for calibration).

A family is data, not a subclass: add one by adding an entry to ``FAMILIES``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from export.parity import Runner, TaskMetric
from export.spec import ELEMENTWISE_TOLERANCES, ExportSpec, IOSpec, MetricTolerance, Tolerance

HeldOut = tuple[dict[str, np.ndarray], np.ndarray]  # (inputs, integer labels)


@dataclass(frozen=True)
class Family:
    name: str
    spec: ExportSpec
    build: Callable[[Path | None], torch.nn.Module]  # weights path (None = the shipped default) -> eval module
    default_weights: Path | None = None
    labels: tuple[str, ...] | None = None
    label_output: str = "logits"
    held_out: Callable[[], HeldOut] | None = None  # real held-out data with labels
    calibration: Callable[[], dict[str, np.ndarray]] | None = None  # real samples for INT8 calibration
    finetune: Callable[[torch.nn.Module], torch.nn.Module] | None = None  # the model's own recipe, short
    max_batch_size: int = 64
    preferred_batch_size: tuple[int, ...] = (16, 32)
    max_queue_delay_us: int = 500  # the repository entry's dynamic_batching delay
    # How lossy variants are judged when top-1 accuracy on ``held_out`` does not apply
    # (a detector: mAP); ``held_out`` then only feeds the element-wise checks.
    metric: TaskMetric | None = None

    @classmethod
    def for_module(cls, name: str, module: torch.nn.Module, spec: ExportSpec, **fields) -> Family:
        """Any ``nn.Module`` as a one-off family (the spec supplies the example inputs)."""
        return cls(name, spec, lambda _weights: module.eval(), **fields)

    def weights_digest(self, weights: Path | None) -> str:
        path = weights or self.default_weights
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else "seeded-init"

    def calibration_samples(self) -> dict[str, np.ndarray]:
        if self.calibration is not None:
            return self.calibration()
        return self.spec.random_inputs({"batch": 256}, seed=1234)


# -- digits ------------------------------------------------------------------------------

def _digits_build(weights: Path | None) -> torch.nn.Module:
    from models import digits_cnn

    return digits_cnn.load(weights or digits_cnn.WEIGHTS)


@cache
def _digits_split():
    from models.digits_data import load_split

    return load_split()


def _digits_held_out() -> HeldOut:
    s = _digits_split()
    return {"input": s.x_test}, s.y_test


def _digits_calibration() -> dict[str, np.ndarray]:
    """256 training images (never the held-out part), a fixed stride through the split."""
    s = _digits_split()
    return {"input": s.x_train[:: max(1, len(s.x_train) // 256)][:256]}


def _digits_finetune(model: torch.nn.Module) -> torch.nn.Module:
    from models.train_digits import FINETUNE, train

    return train(model, _digits_split(), FINETUNE)


def _digits_family() -> Family:
    from models import digits_cnn

    spec = ExportSpec(inputs=(IOSpec("input", ("batch", 1, 8, 8)),), outputs=(IOSpec("logits", ("batch", 10)),))
    return Family("digits", spec, _digits_build, digits_cnn.WEIGHTS, digits_cnn.LABELS, "logits",
                  _digits_held_out, _digits_calibration, _digits_finetune)


# -- shapes detector ---------------------------------------------------------------------

SHAPES_METRIC_SCENES = 150  # held-out scenes per mAP evaluation: ~2.5 s with ONNX Runtime on 2 cores
SHAPES_CALIBRATION_SCENES = 128  # training scenes for INT8 calibration
SHAPES_AGREEMENT_SCORE = 0.3  # fp32 detections at least this confident are the boxes a variant must find

# Lossy variants keep mAP@0.5 within 2 points of fp32 and find fp32's confident boxes
# (box agreement: mAP@0.5 of the variant against them) at >= 0.9.
_SHAPES_METRIC = {
    variant: MetricTolerance(max_metric_drop=0.02, min_top1_agreement=0.9)
    for variant in ("int8-static", "int8-dynamic", "trt-int8", "sparse50", "pruned50")
}
# Element-wise, fp32: the detector's ``size`` output is exp() of a regression, in pixels (up to
# ~200), and the exported graph's fusions vary from one export to the next (their order
# follows Python's hash seed), which moves single values by up to ~3.4e-3 (measured). A few
# thousandths of a pixel or of a heatmap probability change no detection; the task check
# (mAP) judges the rest. Still a bar that a wrong export fails.
_SHAPES_ELEMENTWISE = {
    **ELEMENTWISE_TOLERANCES,
    "fp32": Tolerance(atol=1e-2, rtol=1e-3),
    "fp32-ortopt": Tolerance(atol=1e-2, rtol=1e-3),
}


def _shapes_build(weights: Path | None) -> torch.nn.Module:
    from models import shapes_detector

    return shapes_detector.load(weights or shapes_detector.WEIGHTS).eval()


def _shapes_input_size() -> int:
    from models import checkpoint, shapes_detector

    return shapes_detector.config_from_metadata(checkpoint.metadata(shapes_detector.WEIGHTS)).input_size


def _shapes_held_out() -> HeldOut:
    """32 held-out scenes, letterboxed as the server does: the inputs of the element-wise
    checks. The labels are placeholders: detection quality is the family's ``metric``."""
    from models import shapes_data

    size = _shapes_input_size()
    scenes = shapes_data.make_scenes(shapes_data.HELDOUT_SEED, 32)
    images = np.stack([shapes_data.letterbox(scene.image, size)[0] for scene in scenes])
    return {"image": images}, np.zeros(len(scenes), np.int64)


@cache
def _shapes_prepared(seed: int, n: int):
    """``models.train_shapes.prepare``: n scenes letterboxed (uint8) with ground truth."""
    from models import train_shapes

    return train_shapes.prepare(seed, n, _shapes_input_size(), workers=1)


def _shapes_calibration() -> dict[str, np.ndarray]:
    """Training scenes (never held-out ones), letterboxed as served, in [0, 1]."""
    from models.shapes_data import TRAIN_SEED

    pixels = _shapes_prepared(TRAIN_SEED, SHAPES_CALIBRATION_SCENES).pixels
    return {"image": pixels.numpy().astype(np.float32) * np.float32(1 / 255)}


class _RunnerAsModule:
    """A :data:`Runner` behind the call ``train_shapes.detect`` makes on a torch model."""

    def __init__(self, run: Runner, input_name: str) -> None:
        self._run, self._input = run, input_name

    def eval(self) -> _RunnerAsModule:
        return self

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.asarray(o, np.float32)) for o in self._run({self._input: image.numpy()}))


def shapes_metric(scenes: int = SHAPES_METRIC_SCENES) -> TaskMetric:
    """mAP@0.5 on the first ``scenes`` held-out scenes, by ``models.train_shapes``' own
    evaluation (decode, class-aware NMS, boxes mapped back to the original image, COCOeval)."""
    from dataclasses import replace

    from models import train_shapes
    from models.shapes_data import HELDOUT_SEED

    def predict(run: Runner):
        return train_shapes.detect(_RunnerAsModule(run, "image"), _shapes_prepared(HELDOUT_SEED, scenes))

    def score(detections) -> float:
        return train_shapes.coco_map(_shapes_prepared(HELDOUT_SEED, scenes), detections)["map50"]

    def agreement(reference, detections) -> float:
        """mAP@0.5 of the variant's detections against fp32's confident ones as ground truth."""
        kept = [scores >= SHAPES_AGREEMENT_SCORE for _, scores, _ in reference]
        truth = replace(_shapes_prepared(HELDOUT_SEED, scenes),
                        original_boxes=[boxes[k] for (boxes, _, _), k in zip(reference, kept, strict=True)],
                        labels=[labels[k] for (_, _, labels), k in zip(reference, kept, strict=True)])
        return max(train_shapes.coco_map(truth, detections)["map50"], 0.0)

    return TaskMetric(
        "mAP@0.5", predict, score, scenes, agreement, "box agreement",
        f"COCO mAP@0.5 (pycocotools, `models.train_shapes.coco_map`) on the first {scenes} held-out scenes "
        f"(HELDOUT_SEED), boxes mapped back to each original image; box agreement = mAP@0.5 of the variant "
        f"against fp32's own detections scoring >= {SHAPES_AGREEMENT_SCORE} as ground truth",
    )


def _shapes_family() -> Family:
    from models import shapes_detector

    size = _shapes_input_size()
    grid = size // shapes_detector.STRIDE
    classes = len(shapes_detector.LABELS)
    spec = ExportSpec(
        inputs=(IOSpec("image", ("batch", 3, size, size)),),
        outputs=(IOSpec("heatmap", ("batch", classes, grid, grid)), IOSpec("size", ("batch", 2, grid, grid)),
                 IOSpec("offset", ("batch", 2, grid, grid))),
        tolerances=dict(_SHAPES_ELEMENTWISE),
        metric_tolerances=dict(_SHAPES_METRIC),
    )
    return Family("shapes", spec, _shapes_build, shapes_detector.WEIGHTS, None, "heatmap", _shapes_held_out,
                  _shapes_calibration, max_batch_size=16, preferred_batch_size=(4, 8), metric=shapes_metric())


# -- generative digits: VAE encoder / decoder, diffusion U-Net ---------------------------

# Element-wise checks only (no labels, no top-1): real held-out inputs for each.

def _gen_held_out_images() -> np.ndarray:
    from models.digits_gen import upsample

    return upsample(_digits_split().x_test)  # (450, 1, 16, 16) in [0, 1]


def _vae_encoder_build(weights: Path | None) -> torch.nn.Module:
    from models import digit_vae

    return digit_vae.VAEEncoder(digit_vae.load(weights or digit_vae.WEIGHTS)).eval()


def _vae_decoder_build(weights: Path | None) -> torch.nn.Module:
    from models import digit_vae

    return digit_vae.VAEDecoder(digit_vae.load(weights or digit_vae.WEIGHTS)).eval()


def _vae_latent_dim() -> int:
    from models import checkpoint, digit_vae

    return digit_vae.config_from_metadata(checkpoint.metadata(digit_vae.WEIGHTS)).latent_dim


def _vae_encoder_held_out() -> HeldOut:
    """The 450 held-out digits at 16x16; labels are their digits (not scored)."""
    return {"image": _gen_held_out_images()}, _digits_split().y_test


def _vae_decoder_held_out() -> HeldOut:
    """Seeded z ~ N(0, I) with 50 of each digit: what the decoder is served."""
    from models.digits_gen import sample_labels

    labels = sample_labels(50)
    z = np.random.default_rng(0).standard_normal((len(labels), _vae_latent_dim())).astype(np.float32)
    return {"z": z, "label": labels}, labels


def _vae_encoder_family() -> Family:
    from models import digit_vae

    latent = _vae_latent_dim()
    spec = ExportSpec(inputs=(IOSpec("image", ("batch", 1, 16, 16)),), outputs=(IOSpec("embedding", ("batch", latent)),))
    return Family("digits_vae_encoder", spec, _vae_encoder_build, digit_vae.WEIGHTS, held_out=_vae_encoder_held_out)


def _vae_decoder_family() -> Family:
    from models import digit_vae

    latent = _vae_latent_dim()
    spec = ExportSpec(
        inputs=(IOSpec("z", ("batch", latent), value_range=(-3.0, 3.0)),
                IOSpec("label", ("batch",), dtype="int64", value_range=(0, 10))),
        outputs=(IOSpec("image", ("batch", 1, 16, 16)),),
    )
    return Family("digits_vae_decoder", spec, _vae_decoder_build, digit_vae.WEIGHTS, held_out=_vae_decoder_held_out)


def _unet_build(weights: Path | None) -> torch.nn.Module:
    from models import digit_unet

    return digit_unet.load(weights or digit_unet.WEIGHTS)


def _unet_held_out() -> HeldOut:
    """The held-out digits in [-1, 1], noised by the U-Net's own schedule at seeded uniform t;
    labels their digits, every fifth replaced by the null class (guidance's unconditional pass)."""
    from models import checkpoint, digit_unet
    from models.digits_gen import NULL_CLASS

    schedule = digit_unet.config_from_metadata(checkpoint.metadata(digit_unet.WEIGHTS)).schedule()
    rng = np.random.default_rng(0)
    x0 = _gen_held_out_images() * 2.0 - 1.0
    t = rng.integers(0, schedule.train_steps, len(x0)).astype(np.int64)
    abar = schedule.alphas_cumprod()[t].reshape(-1, 1, 1, 1)
    x = (np.sqrt(abar) * x0 + np.sqrt(1 - abar) * rng.standard_normal(x0.shape)).astype(np.float32)
    y = _digits_split().y_test.copy()
    y[::5] = NULL_CLASS
    return {"x": x, "t": t, "y": y}, y


def _unet_family() -> Family:
    from models import digit_unet

    spec = ExportSpec(
        inputs=(IOSpec("x", ("batch", 1, 16, 16), value_range=(-2.0, 2.0)),
                IOSpec("t", ("batch",), dtype="int64", value_range=(0, 1000)),
                IOSpec("y", ("batch",), dtype="int64", value_range=(0, 11))),
        outputs=(IOSpec("eps", ("batch", 1, 16, 16)),),
    )
    return Family("digits_unet", spec, _unet_build, digit_unet.WEIGHTS, held_out=_unet_held_out,
                  max_batch_size=128, preferred_batch_size=(32, 64))


# -- speech (transcription) ----------------------------------------------------------------

def _speech_build(weights: Path | None) -> torch.nn.Module:
    from models import speech_ctc

    return speech_ctc.load(weights or speech_ctc.WEIGHTS)


def _speech_family() -> Family:
    """The CTC recognizer: log-mel features (batch, time, 80) -> per-frame character
    log-probabilities (batch, frames, characters); both time axes dynamic. Parity on random
    features in the log-mel range (silence floor to loud speech)."""
    from models import speech_ctc
    from server.pipelines.audio_features import FEATURE_FLOOR, N_MELS

    spec = ExportSpec(
        inputs=(IOSpec("features", ("batch", "time", N_MELS), value_range=(FEATURE_FLOOR, 4.0)),),
        outputs=(IOSpec("logits", ("batch", "frames", len(speech_ctc.ALPHABET))),),
        trace_sizes={"batch": 2, "time": 120},
        parity_sizes=({"batch": 1, "time": 90}, {"batch": 3, "time": 301}),
        exporter="torchscript",  # torch 2.13's dynamo exporter cannot decompose a multi-layer bidirectional GRU
    )
    return Family("speech_ctc", spec, _speech_build, speech_ctc.WEIGHTS, max_batch_size=32,
                  preferred_batch_size=(8, 16), metric=_speech_metric(), calibration=_speech_calibration)


def _speech_calibration() -> dict[str, np.ndarray]:
    """64 validation utterances (never the evaluation ones), features padded with silence."""
    from models.speech_data import build_set, pad_features, plan_split
    from models.speech_text import load_vocab
    from server.pipelines.audio_features import log_mel

    audio = build_set(plan_split("val", 64, load_vocab()))
    return {"features": pad_features([log_mel(audio.samples(i)) for i in range(len(audio))])}


SPEECH_EVAL_UTTERANCES = 200


@cache
def _speech_eval() -> tuple[list[np.ndarray], list[str]]:
    """Held-out sentences in the training voices (``models.speech_data``'s test_seen split,
    the first 200, clean), synthesized with espeak-ng once and cached: (features, references)."""
    from models.speech_data import build_set, plan_split
    from models.speech_text import load_vocab
    from server.pipelines.audio_features import log_mel

    words = load_vocab()
    seen = frozenset(u.transcript for u in plan_split("train", 20000, words))
    audio = build_set(plan_split("test_seen", SPEECH_EVAL_UTTERANCES, words, seen))
    return [log_mel(audio.samples(i)) for i in range(len(audio))], [u.transcript for u in audio.utterances]


def _speech_predict(run: Runner) -> list[str]:
    """Greedy transcripts of the evaluation utterances through ``run``, batches of 16."""
    from models import speech_ctc
    from models.speech_data import pad_features

    feats, _ = _speech_eval()
    out = [""] * len(feats)
    order = np.argsort([len(f) for f in feats])
    for start in range(0, len(order), 16):
        idx = order[start : start + 16]
        log_probs = run({"features": pad_features([feats[i] for i in idx])})[0]
        for row, i in enumerate(idx):
            frames = speech_ctc.output_frames(len(feats[i]))
            out[i] = speech_ctc.greedy_decode(np.asarray(log_probs[row, :frames]))
    return out


def _word_accuracy(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    return 1.0 - jiwer.wer(refs, [h or "<empty>" for h in hyps])


def _speech_metric() -> TaskMetric:
    return TaskMetric(
        name="word accuracy", predict=_speech_predict,
        score=lambda hyps: _word_accuracy(_speech_eval()[1], hyps), samples=SPEECH_EVAL_UTTERANCES,
        agreement=_word_accuracy, agreement_name="word agreement with fp32",
        description=(f"1 - WER (jiwer) of greedy transcripts of {SPEECH_EVAL_UTTERANCES} held-out sentences in the "
                     "training voices, synthesized by espeak-ng; agreement = 1 - WER of the variant's transcripts "
                     "against fp32's"),
    )


# -- benchmark networks (untrained, seeded) ---------------------------------------------

# No labels: lossy variants are judged by top-1 agreement with fp32 on random inputs.
# An untrained network's logits sit close together, so the bar is lower than a trained one's.
_BENCH_METRIC = {
    "int8-static": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.6),
    "int8-dynamic": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.6),
    "trt-int8": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.6),
    "sparse50": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.0),
    "pruned50": MetricTolerance(max_metric_drop=1.0, min_top1_agreement=0.0),
}


def _resnet_family() -> Family:
    from models.bench import resnet_bench

    spec = ExportSpec(inputs=(IOSpec("input", ("batch", 3, 64, 64), value_range=(-1.0, 1.0)),),
                      outputs=(IOSpec("logits", ("batch", 10)),), metric_tolerances=dict(_BENCH_METRIC))
    return Family("resnet_bench", spec, lambda _w: resnet_bench(seed=0))


def _mlp_family() -> Family:
    from models.bench import mlp_tiny

    spec = ExportSpec(inputs=(IOSpec("input", ("batch", 64), value_range=(-1.0, 1.0)),),
                      outputs=(IOSpec("logits", ("batch", 10)),), metric_tolerances=dict(_BENCH_METRIC))
    # No batching delay: a lone request runs at once (as without batching), and under load
    # batches still form while the instance is busy.
    return Family("mlp_tiny", spec, lambda _w: mlp_tiny(seed=0), max_queue_delay_us=0)


FAMILIES: dict[str, Callable[[], Family]] = {
    "digits": _digits_family,
    "shapes": _shapes_family,
    "resnet_bench": _resnet_family,
    "mlp_tiny": _mlp_family,
    "digits_vae_encoder": _vae_encoder_family,
    "digits_vae_decoder": _vae_decoder_family,
    "digits_unet": _unet_family,
    "speech_ctc": _speech_family,
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]()
    except KeyError:
        raise KeyError(f"unknown model family '{name}'; known: {', '.join(FAMILIES)}") from None
