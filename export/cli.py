"""``deepserve export ...`` (``app``) and ``deepserve models ...`` (``models_app``).

The lead's ``server/cli.py`` mounts both; ``python -m export.cli`` runs them standalone.
Exit codes: 0 written; 1 a parity check failed (nothing written for that variant; the
numbers are printed; with ``--module`` / ``--onnx`` / ``--pt2``, nothing written at all); 2 a
usage error (a bad ``--module`` / ``--onnx`` / ``--pt2`` / ``--input`` / ``--weights`` / data file,
an op ONNX export lacks, pruning asked of an ONNX file), or TensorRT asked for on a host
without a GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Export networks to ONNX / TensorRT, quantize, prune, verify, report.", no_args_is_help=True)
models_app = typer.Typer(help="Build the model repositories deepserve ships.", no_args_is_help=True)

Out = Annotated[Path, typer.Option("--out", help="model repository folder to write into")]
Force = Annotated[bool, typer.Option("--force", help="rebuild even when up to date")]
FamilyArg = Annotated[str, typer.Argument(help="model family (see `deepserve export families`)")]
RepoOpt = Annotated[Path, typer.Option("--repository", "-r", help="model repository to write into")]
VariantsOpt = Annotated[str, typer.Option(help="comma list: fp32, fp32-ortopt, fp16, int8-dynamic, int8-static, "
                                               "sparse50, pruned50, trt-fp16, trt-int8")]
NameOpt = Annotated[str, typer.Option(help="entry name (default: the family's); variants get a suffix")]
VersionOpt = Annotated[int, typer.Option(min=1)]
CalibrationOpt = Annotated[str, typer.Option(help="int8-static calibration: minmax, entropy or percentile")]
DEFAULT_REPORT_VARIANTS = "fp32,fp32-ortopt,fp16,int8-dynamic,int8-static,sparse50,pruned50"


@models_app.command("build-default")
def build_default(out: Out, force: Force = False) -> None:
    """Write the default repository (the trained ``digits`` classifier)."""
    from export.default_repository import build_default_repository

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_default_repository(out, force=force)
    typer.echo(f"default repository ready in {out}")


@models_app.command("build-bench")
def build_bench(out: Out, force: Force = False) -> None:
    """Write the benchmark repository (resnet_bench, mlp_tiny, and *_nobatch twins)."""
    from export.default_repository import build_benchmark_repository

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_benchmark_repository(out, force=force)
    typer.echo(f"benchmark repository ready in {out}")


@app.command("families")
def families() -> None:
    """List the model families ``export`` knows."""
    from export.families import FAMILIES

    for name in FAMILIES:
        typer.echo(name)


def _variants(text: str) -> list[str]:
    from export.variants import VARIANTS

    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return names


def _options(calibration: str, keep_io_types: bool, prune_ratio: float):
    from export.prune import PruneSpec
    from export.quantize import QuantSpec
    from export.variants import BuildOptions

    return BuildOptions(QuantSpec(calibration=calibration), PruneSpec(ratio=prune_ratio), keep_io_types)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _family(name: str):
    from export.families import get_family

    try:
        return get_family(name)
    except KeyError as err:
        raise typer.BadParameter(str(err.args[0])) from None


@app.command("model")
def export_model(
    ctx: typer.Context,
    repository: RepoOpt,
    family: Annotated[str | None, typer.Argument(help="model family (see `deepserve export families`); "
                                                      "omit it with --module")] = None,
    variants: VariantsOpt = "fp32",
    name: NameOpt = "",
    version: VersionOpt = 1,
    weights: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="safetensors weights (default: shipped)")] = None,
    calibration: CalibrationOpt = "minmax",
    keep_io_types: Annotated[bool, typer.Option(help="fp16: keep graph inputs/outputs float32")] = True,
    prune_ratio: Annotated[float, typer.Option(min=0.0, max=0.95, help="fraction pruned (channels or weights)")] = 0.5,
    task: Annotated[str, typer.Option(help="also write the pipeline ensemble around it: classify or detect")] = "",
    preprocess: Annotated[list[str] | None, typer.Option(help="image.decode_resize parameter KEY=VALUE (repeat), e.g. "
                                                         "color=RGB mean=0.485,0.456,0.406")] = None,
    labels: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="class labels, one per line")] = None,
    module: Annotated[str, typer.Option(help="your own network: PATH.py:FUNC or package.module:FUNC; FUNC() "
                                        "returns an nn.Module or (module, example_inputs)")] = "",
    onnx: Annotated[Path | None, typer.Option("--onnx", help="a network from an ONNX file (inputs and outputs "
                                              "from the graph; its first axis must be dynamic); no FAMILY")] = None,
    pt2: Annotated[Path | None, typer.Option("--pt2", help="a torch.export program (torch.export.save); inputs "
                                             "from its example inputs or --input; no FAMILY")] = None,
    input: Annotated[list[str] | None, typer.Option("--input", help="with --module/--pt2: NAME:SHAPE[:DTYPE] (repeat), "
                                                    "e.g. input:batch,3,224,224 or audio:batch,time,80:FP32")] = None,
    output: Annotated[list[str] | None, typer.Option("--output", help="with --module: output names (repeat; "
                                                     "default output, output_1, ...)")] = None,
    calibration_data: Annotated[str | None, typer.Option(help="with --module/--onnx/--pt2: int8-static calibration "
                                                         "and the closeness check: a .npz (one array per input), a "
                                                         ".npy, a folder of images (decoded and resized as the "
                                                         "image pipeline does, --preprocess on top), or "
                                                         "PATH.py:FUNC yielding batches")] = None,
    eval_data: Annotated[str | None, typer.Option(help="with --module/--onnx/--pt2: labelled data for accuracy "
                                                  "deltas: a .npz with x (or one array per input) and y, or a "
                                                  "folder of images with one subfolder per class")] = None,
    finetune: Annotated[str, typer.Option(help="with --module and sparse50/pruned50: PATH.py:FUNC, FUNC(module) "
                                          "trains the pruned network in place; or 'builtin' (a few epochs of "
                                          "cross-entropy on --eval-data)")] = "",
    report_to: Annotated[Path | None, typer.Option("--report", help="with --module/--onnx/--pt2: measure every "
                                                   "variant and write the table to FILE.md and FILE.json")] = None,
) -> None:
    """Export, check and write variants; exits 1 with the numbers when a parity check fails.
    With --task, the ensemble NAME_TASK serves image bytes through /v1/classify or /v1/detect.
    With --module, --onnx or --pt2, your own network (no FAMILY): written only when every variant passes."""
    from export.tensorrt import GpuUnavailable
    from export.variants import export_variants

    _log_export_info()
    if module or onnx is not None or pt2 is not None or family is None:
        sources = [flag for flag, given in (("FAMILY", family is not None), ("--module", bool(module)),
                                            ("--onnx", onnx is not None), ("--pt2", pt2 is not None)) if given]
        if len(sources) > 1:
            _fail(f"Error: {' and '.join(sources)} are mutually exclusive: give one network source, not both", 2)
        _export_user_model(family, module, repository, _variants(variants), name, version, weights,
                           _options(calibration, keep_io_types, prune_ratio), input or [], output or [], labels,
                           calibration_data, eval_data, task, onnx=onnx, pt2=pt2, preprocess=preprocess or [],
                           finetune=finetune, report_to=report_to, ctx=ctx)
        return
    if input or output or calibration_data or eval_data or finetune or report_to:
        raise typer.BadParameter("--input, --output, --calibration-data, --eval-data, --finetune and --report go "
                                 "with --module, --onnx or --pt2 (a family's report: `deepserve export report`)")
    fam = _family(family)
    try:
        written, failed = export_variants(repository, fam, _variants(variants), name=name or None, version=version,
                                          weights=weights, options=_options(calibration, keep_io_types, prune_ratio))
    except GpuUnavailable as err:
        _fail(str(err), 2)
    for art in written:
        typer.echo(art.parity.summary())
    if failed:
        _fail("parity failed, not written:\n" + "\n".join(f"  {e}" for e in failed))
    if task:
        from export.variants import entry_name

        network = entry_name(name or fam.name, written[0].variant)
        typer.echo(f"wrote {_pipeline(repository, fam, network, task, preprocess or [], labels)} around {network}")


def _log_export_info() -> None:
    """Our progress lines at INFO; other libraries' (ONNX Runtime's quantizer logs every tensor) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("export").setLevel(logging.INFO)


def _export_user_model(family, module, repository, variants, name, version, weights, options, inputs, outputs,
                       labels, calibration_data, eval_data, task, onnx=None, pt2=None, preprocess=(), finetune="",
                       report_to=None, ctx=None) -> None:
    """``--module`` / ``--onnx`` / ``--pt2``: build and check every variant first; write them only if all passed."""
    from export.tensorrt import GpuUnavailable
    from export.user import PRUNING, UserInputError, build_user_variants, onnx_family, program_family, user_family
    from export.variants import entry_name, write_variant

    flag = "--onnx" if onnx is not None else "--pt2" if pt2 is not None else "--module"
    if family is not None:
        raise typer.BadParameter(f"give a FAMILY ('{family}') or {flag}, not both")
    if not module and onnx is None and pt2 is None:
        raise typer.BadParameter("missing FAMILY (see `deepserve export families`), --module PATH.py:FUNC, "
                                 "--onnx FILE.onnx or --pt2 FILE.pt2")
    if not name:
        raise typer.BadParameter(f"{flag} needs --name (the repository entry's name)")
    if flag != "--module" and weights is not None:
        _fail(f"Error: --weights goes with --module; the weights of {flag} are in the file", 2)
    if onnx is not None and (inputs or outputs):
        _fail("Error: --input and --output go with --module/--pt2; with --onnx they come from the graph", 2)
    if flag != "--module" and PRUNING & set(variants):
        _fail(f"Error: --variants {','.join(v for v in variants if v in PRUNING)}: pruning needs the torch "
              f"network (--module); {flag} gives a fixed graph", 2)
    if finetune and not PRUNING & set(variants):
        _fail("Error: --finetune fine-tunes a pruned network: it goes with --variants sparse50 or pruned50", 2)
    try:
        data = {"labels": labels, "calibration_data": calibration_data, "eval_data": eval_data,
                "preprocess": _key_values(preprocess)}
        if onnx is not None:
            net = onnx_family(name, onnx, **data)
        elif pt2 is not None:
            net = program_family(name, pt2, inputs, outputs, **data)
        else:
            net = user_family(name, module, inputs, outputs, weights=weights, finetune=finetune, **data)
        if task:
            _check_task(net.family, task, labels)  # before anything is built or written
        artifacts, failed = build_user_variants(net, variants, options)
        # The report's baseline is fp32 even when it is not asked for (measured, not written).
        baseline = [] if report_to is None or "fp32" in variants else build_user_variants(net, ["fp32"], options)[0]
    except (UserInputError, GpuUnavailable) as err:
        _fail(f"Error: {err}", 2)
    for art in artifacts:
        typer.echo(art.parity.summary())
    if failed:
        _fail("parity failed; nothing written:\n" + "\n".join(f"  {e}" for e in failed))
    for art in artifacts:
        path = write_variant(repository, net.family, art, entry_name(name, art.variant), version)
        typer.echo(f"wrote {path}")
    if report_to is not None:
        _write_reports(ctx, net.family, baseline + artifacts, net.family.build(None), report_to, [])
    if task:
        network = entry_name(name, artifacts[0].variant)
        typer.echo(f"wrote {_pipeline(repository, net.family, network, task, list(preprocess), labels)} around {network}")


def _key_values(items) -> dict[str, str]:
    """``--preprocess KEY=VALUE`` (repeated) as a dict."""
    from export.user import UserInputError

    pairs = [item.partition("=") for item in items]
    bad = [item for item, (key, sep, _) in zip(items, pairs, strict=True) if not sep or not key]
    if bad:
        raise UserInputError(f"--preprocess takes KEY=VALUE, not {bad[0]!r}")
    return {key: value for key, _, value in pairs}


def _check_task(fam, task: str, labels: Path | None) -> None:
    """What ``--task`` needs of a user's network, checked before anything is written: one
    image input (C, H, W) with C 1 or 3 and fixed H, W; labels; for detect, the
    ``detect.centernet`` outputs (heatmap, size, offset)."""
    from export.user import UserInputError

    if task not in ("classify", "detect"):
        raise UserInputError(f"--task must be classify or detect, not '{task}'")
    if labels is None:
        raise UserInputError(f"--task {task} needs --labels (the class names the route answers with)")
    if len(fam.spec.inputs) != 1:
        raise UserInputError(f"--task {task}: the network must take one image input, not {len(fam.spec.inputs)}")
    size = fam.spec.inputs[0].shape[1:]
    if len(size) != 3 or size[0] not in (1, 3) or not all(isinstance(d, int) for d in size):
        raise UserInputError(f"--task {task}: the input must be (batch, C, H, W) with C 1 or 3 and fixed H and W, "
                             f"not {fam.spec.inputs[0].shape}")
    if task == "detect" and len(fam.spec.outputs) < 3:
        raise UserInputError("--task detect: the network must return heatmap, size and offset (detect.centernet)")


def _pipeline(repository: Path, fam, network: str, task: str, preprocess: list[str], labels: Path | None) -> str:
    """The ensemble around an exported network, named NETWORK_TASK."""
    from export.pipelines import ImagePreprocess, write_classify_pipeline, write_detect_pipeline
    from export.user import UserInputError

    try:
        options = _key_values(preprocess)
    except UserInputError as err:
        raise typer.BadParameter(str(err)) from None
    names = tuple(labels.read_text().splitlines()) if labels else fam.labels
    spec_in, spec_out = fam.spec.inputs[0], fam.spec.outputs
    size = spec_in.shape[1:]
    if task == "classify":
        classes = spec_out[0].shape[-1]
        source = labels or (repository / network / "labels.txt")
        if not source.is_file():
            raise typer.BadParameter("classify needs --labels (the network has no label file)")
        params = {"height": str(size[-2]), "width": str(size[-1]), "color": "RGB" if size[0] == 3 else "L", **options}
        write_classify_pipeline(repository, f"{network}_classify", network, (spec_in.name, spec_out[0].name), classes,
                                source, ImagePreprocess(params.pop("processor", "image.decode_resize"), size, params))
        return f"{network}_classify"
    if task == "detect":
        if not names:
            raise typer.BadParameter("detect needs --labels")
        write_detect_pipeline(repository, f"{network}_detect", network, int(size[-1]), tuple(names),
                              (spec_in.name, tuple(o.name for o in spec_out[:3])))
        return f"{network}_detect"
    raise typer.BadParameter(f"--task must be classify or detect, not '{task}'")


@app.command("tensorrt")
def export_tensorrt(
    ctx: typer.Context,
    repository: RepoOpt,
    family: Annotated[str | None, typer.Argument(help="model family; omit it with --onnx")] = None,
    precision: Annotated[str, typer.Option(help="fp16 or int8 (int8 is built from the QDQ model)")] = "fp16",
    name: NameOpt = "",
    version: VersionOpt = 1,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="any ONNX file (first axis dynamic); with --name")] = None,
    calibration_data: Annotated[str | None, typer.Option(help="with --onnx and int8: calibration samples, as "
                                                         "`export model` takes them")] = None,
) -> None:
    """Build a TensorRT engine (GPU only) with a batch profile from the config; cached per GPU and TensorRT."""
    if precision not in ("fp16", "int8"):
        raise typer.BadParameter("precision must be fp16 or int8")
    if onnx is None and family is None:
        raise typer.BadParameter("give a FAMILY (see `deepserve export families`) or --onnx FILE.onnx")
    if onnx is None and calibration_data is not None:
        raise typer.BadParameter("--calibration-data goes with --onnx (a family calibrates on its own data)")
    export_model(ctx, repository, family, f"trt-{precision}", name, version, onnx=onnx,
                 calibration_data=calibration_data)


@app.command("report")
def report(
    ctx: typer.Context,
    family: FamilyArg,
    variants: VariantsOpt = DEFAULT_REPORT_VARIANTS,
    out: Annotated[Path | None, typer.Option(help="Markdown file (default: docs/variants/FAMILY.md)")] = None,
    repository: Annotated[Path | None, typer.Option(help="also write the passing variants here")] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0: all cores)")] = 0,
    calibration: CalibrationOpt = "minmax",
) -> None:
    """Build every variant, check it, measure it, and print + write the variant table."""
    from export.parity import ParityError
    from export.tensorrt import GpuUnavailable
    from export.variants import VariantBuilder, entry_name, write_variant

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    fam = _family(family)
    builder = VariantBuilder(fam, options=_options(calibration, True, 0.5))
    artifacts, failures = [], []
    for variant in _variants(variants):
        try:
            artifacts.append(builder.build(variant))
        except ParityError as err:
            failures.append(str(err))
        except GpuUnavailable as err:
            failures.append(f"{variant}: skipped: {err}")
    for art in artifacts if repository else []:
        write_variant(repository, fam, art, entry_name(fam.name, art.variant))
    _write_reports(ctx, fam, artifacts, builder.module, out or Path("docs") / "variants" / f"{fam.name}.md", failures,
                   threads)
    if any("FAIL" in f for f in failures):
        _fail("\n".join(failures))


def _command_line(ctx: typer.Context) -> str:
    """The running command as ``deepserve ...`` with the values given (defaults left out):
    how a report says it was made."""
    import shlex

    parts = ["deepserve", *(c.info_name for c in (ctx.parent, ctx) if c is not None and c.info_name)]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value in ("", [], ()):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if param.param_type_name == "argument":
            parts += [shlex.quote(str(v)) for v in values]
        elif getattr(param, "is_flag", False):
            parts.append(param.opts[-1] if value else (param.secondary_opts or param.opts)[-1])
        else:
            for v in values:
                parts += [max(param.opts, key=len), shlex.quote(str(v))]
    return " ".join(parts)


def _write_reports(ctx: typer.Context, fam, artifacts, reference, target: Path, failures: list[str],
                   threads: int = 0) -> None:
    """Measure the artifacts, print the table, and write it as TARGET.md and TARGET.json."""
    from export.report import measure_rows, print_table, to_json, to_markdown, write_report

    rows = measure_rows(fam, artifacts, threads or None, reference=reference)
    typer.echo(print_table(rows))
    command = _command_line(ctx)
    text = to_markdown(fam, rows, command)
    text += "\n## Parity\n\n" + "\n".join(f"- {a.parity.summary()}" for a in artifacts) + "\n"
    if failures:
        text += "\n## Not built\n\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    target = target.with_suffix(".md")
    write_report(target, text)
    write_report(target.with_suffix(".json"), to_json(fam, rows, command))
    typer.echo(f"wrote {target} and {target.with_suffix('.json')}")


root = typer.Typer(no_args_is_help=True)
root.add_typer(app, name="export")
root.add_typer(models_app, name="models")

if __name__ == "__main__":
    root()
