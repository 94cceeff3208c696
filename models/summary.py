"""The README's table of the default models' metrics, and ``models/README.md``'s table of
the generative models' evaluation, generated from ``models/results/``.

    python -m models.summary            # rewrites the blocks between the markers

``tests/unit/test_readme_figures.py`` fails when the README's block differs from what
this renders from the committed results (so no figure in it is ever typed by hand).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- models-summary:start -->", "<!-- models-summary:end -->"
GEN_START, GEN_END = "<!-- generation-table:start -->", "<!-- generation-table:end -->"
SPEECH_START, SPEECH_END = "<!-- speech-table:start -->", "<!-- speech-table:end -->"
SPEECH_TARGETS = {"test_seen": 0.10, "test_unseen": 0.20}  # the WER bars (training / unseen voices)


def _speech_verdict(evaluation: dict, split: str, kind: str = "augmented") -> str:
    """The served decoder's (beam) WER on the noisy (``augmented``) or ``clean`` set against the
    split's target (the issue names no noise condition: both are judged)."""
    wer = evaluation[f"{split}_{kind}"]["beam"]["wer"]
    return f"WER {wer:.1%} vs target {SPEECH_TARGETS[split]:.0%}: {'met' if wer <= SPEECH_TARGETS[split] else 'MISSED'}"


def render(root: Path = ROOT) -> str:
    digits = json.loads((root / "models/results/digits_classify.json").read_text())
    shapes = json.loads((root / "models/results/shapes_detector.json").read_text())
    per_class = ", ".join(f"{name} {ap:.3f}" for name, ap in shapes["ap50"].items())
    generation = json.loads((root / "models/results/digits_generation.json").read_text())
    gen = generation["results"]
    total = generation["samples"]["total"]
    defaults = generation["defaults"]
    ddim = {(r["steps"], r["guidance_scale"]): r for r in gen["diffusion_ddim"]}
    default_run = ddim[(defaults["steps"], defaults["guidance_scale"])]
    steps_fd = ", ".join(f"{steps} steps {r['frechet_distance']:.1f}" for (steps, g), r in sorted(ddim.items())
                         if g == defaults["guidance_scale"])
    rows = [
        "| model | what it is measured on | result | results file |",
        "|---|---|---|---|",
        (f"| `digits` | the {digits['images']} held-out 8×8 digits | accuracy **{digits['tensor_accuracy']:.2%}** "
         f"({digits['tensor_correct']} / {digits['images']}) | `models/results/digits_classify.json` |"),
        (f"| `digits_classify` (`/v1/classify`) | the same digits drawn as images (scale, border, contrast, "
         f"polarity, JPEG) | accuracy **{digits['accuracy']:.2%}** ({digits['correct']} / {digits['images']}) | "
         "`models/results/digits_classify.json` |"),
        (f"| `shapes` / `shapes_detect` (`/v1/detect`) | {shapes['heldout_scenes']} held-out generated scenes, "
         f"pycocotools | mAP@0.5 **{shapes['map50']:.3f}**, mAP@0.5:0.95 **{shapes['map50_95']:.3f}** "
         f"(AP@0.5: {per_class}) | `models/results/shapes_detector.json` |"),
        (f"| `digits_vae` (`/v1/images/generations`) | {total} generated digits, {total // 10} per class, judged by "
         f"the `digits` CNN | conditional accuracy **{gen['vae']['conditional_accuracy']:.1%}**, Fréchet distance "
         f"**{gen['vae']['frechet_distance']:.1f}** (real-vs-real floor "
         f"{gen['reference_train_500_vs_held_out']['frechet_distance']:.1f}, uniform noise "
         f"{gen['baseline_uniform_noise']['frechet_distance']:.1f}) | `models/results/digits_generation.json` |"),
        (f"| `digits_diffusion` (`/v1/images/generations`) | the same, DDIM {defaults['steps']} steps, guidance "
         f"{defaults['guidance_scale']} | conditional accuracy **{default_run['conditional_accuracy']:.1%}**, "
         f"Fréchet distance **{default_run['frechet_distance']:.1f}** (guidance {defaults['guidance_scale']}: "
         f"{steps_fd}) | `models/results/digits_generation.json` |"),
    ]
    speech = json.loads((root / "models/results/speech_ctc.json").read_text())["evaluation"]
    seen, unseen = speech["test_seen_augmented"], speech["test_unseen_augmented"]
    rows.append(
        f"| `speech_ctc` / `speech` (`/v1/audio/transcriptions`) | {seen['n']} + {unseen['n']} held-out espeak-ng "
        "sentences in training / unseen voices, noisy (noise, reverb, gain as in training) and clean, beam search "
        "over the word list (as served) | noisy: "
        f"**{_speech_verdict(speech, 'test_seen')}** / **{_speech_verdict(speech, 'test_unseen')}** "
        f"(CER {seen['beam']['cer']:.1%} / {unseen['beam']['cer']:.1%}); clean: "
        f"**{_speech_verdict(speech, 'test_seen', 'clean')}** / **{_speech_verdict(speech, 'test_unseen', 'clean')}** "
        "| `models/results/speech_ctc.json` |")
    text = json.loads((root / "models/results/textgen.json").read_text())
    rows.append(
        f"| `textgen` (`/v1/completions`, `/v1/chat/completions`) | {text['heldout_tokens']:,} tokens of held-out "
        f"standard-library modules' docstrings ({text['params']:,} parameters) | perplexity **{text['heldout_perplexity']:.1f}** "
        f"({text['heldout_bits_per_char']:.2f} bits per character) | `models/results/textgen.json` |")
    return "\n".join([START, "<!-- generated by `python -m models.summary`: do not edit by hand -->", "", *rows, "", END])


def render_generation(root: Path = ROOT) -> str:
    """``models/README.md``'s evaluation table, from ``digits_generation.json``."""
    generation = json.loads((root / "models/results/digits_generation.json").read_text())
    gen, defaults = generation["results"], generation["defaults"]
    default = (defaults["steps"], defaults["guidance_scale"])
    rows = [
        "| images | conditional accuracy | Fréchet distance |",
        "| --- | --- | --- |",
        f"| real: {gen['reference_train_500_vs_held_out']['n']} training digits (reference) | – | "
        f"{gen['reference_train_500_vs_held_out']['frechet_distance']} |",
        f"| real: all {gen['reference_train_vs_held_out']['n']:,} training digits | – | "
        f"{gen['reference_train_vs_held_out']['frechet_distance']} |",
        f"| uniform noise (baseline) | {gen['baseline_uniform_noise']['conditional_accuracy']} | "
        f"{gen['baseline_uniform_noise']['frechet_distance']} |",
        f"| VAE | {gen['vae']['conditional_accuracy']} | {gen['vae']['frechet_distance']} |",
    ]
    for r in sorted(gen["diffusion_ddim"], key=lambda r: (r["guidance_scale"] != defaults["guidance_scale"], r["steps"],
                                                            r["guidance_scale"])):
        label = f"diffusion, DDIM {r['steps']} steps, guidance {r['guidance_scale']}"
        if (r["steps"], r["guidance_scale"]) == default:
            rows.append(f"| **{label} (default)** | **{r['conditional_accuracy']}** | **{r['frechet_distance']}** |")
        else:
            rows.append(f"| {label} | {r['conditional_accuracy']} | {r['frechet_distance']} |")
    return "\n".join([GEN_START, "<!-- generated by `python -m models.summary`: do not edit by hand -->", "", *rows, "",
                      GEN_END])


def render_speech(root: Path = ROOT) -> str:
    """``models/README.md``'s speech table, from ``speech_ctc.json``."""
    results = json.loads((root / "models/results/speech_ctc.json").read_text())
    evaluation = results["evaluation"]
    rows = ["| held-out set | greedy WER / CER | word-snapped WER | beam search (served) WER / CER | target |",
            "| --- | --- | --- | --- | --- |"]
    for split, what in (("test_seen", "training voices"), ("test_unseen", "unseen voices")):
        for kind in ("augmented", "clean"):
            e = evaluation[f"{split}_{kind}"]
            target = _speech_verdict(evaluation, split, kind)
            rows.append(f"| {e['n']} sentences, {what}, {'noisy (as training)' if kind == 'augmented' else 'clean'} | "
                        f"{e['greedy']['wer']:.1%} / {e['greedy']['cer']:.1%} | {e['corrected']['wer']:.1%} | "
                        f"{e['beam']['wer']:.1%} / {e['beam']['cer']:.1%} | {target} |")
    return "\n".join([SPEECH_START, "<!-- generated by `python -m models.summary`: do not edit by hand -->", "", *rows,
                      "", SPEECH_END])


def _splice(text: str, start_marker: str, end_marker: str, block: str) -> str:
    start, end = text.index(start_marker), text.index(end_marker) + len(end_marker)
    return text[:start] + block + text[end:]


def generate(readme: str, root: Path = ROOT) -> str:
    return _splice(readme, START, END, render(root))


def generate_models_readme(text: str, root: Path = ROOT) -> str:
    return _splice(_splice(text, GEN_START, GEN_END, render_generation(root)), SPEECH_START, SPEECH_END,
                   render_speech(root))


def main() -> int:
    path = ROOT / "README.md"
    path.write_text(generate(path.read_text()))
    models_readme = ROOT / "models" / "README.md"
    models_readme.write_text(generate_models_readme(models_readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
