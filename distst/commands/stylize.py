"""``distst stylize``: stylise a content image (or a directory, or a clip) with a style image.

Every argument is checked before a model is built or an image decoded, and every model part must have
weights (reference files or a distst model file) unless ``--allow-random`` says random weights are meant;
``--onnx`` runs a ``distst export`` directory's graphs instead of a torch model.

What a model takes is its registry record's ``inputs``, never its name: a style-transfer model ("content_style")
needs ``--style`` and takes ``--alpha``, ``--style-size`` and ``--vgg/--decoder/--transform``; a translation model
("content": CycleGAN, whose published generator files go by ``--weights generator_weights=FILE``) takes a content
image alone, and a flag that does not apply is refused in one line; a generator of images from noise ("noise")
has no content image, and stylize says where to go instead. A separate ``distst translate`` was not added: a
translation reads and writes images, directories, clips and exports exactly as stylisation does, minus the style.

A clip is a video file (``.mp4``, ``.webm``, ...), or a folder of numbered frames when ``--frames`` is given or
``--out`` names a video file (without either, a folder is a directory of separate images, as before).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import UserError

# The largest --content-size/--style-size: the same limit as every side of a loaded image (images.MAX_SIDE).
MAX_SIZE = 8192
WEIGHT_FLAGS = {"encoder": "--vgg", "transform": "--transform", "decoder": "--decoder"}
# Not argparse defaults: left as None so that a flag --onnx makes meaningless can be told from its default.
DEFAULT_MODEL, DEFAULT_WIDTH, DEFAULT_VARIANT = "adain", 1.0, "fp32"
DEFAULT_ALPHA, DEFAULT_STYLE_SIZE = 1.0, 512
# Flags of style transfer alone (a content and a style image), by their argparse attribute.
STYLE_FLAGS = {"--style": "style", "--alpha": "alpha", "--style-size": "style_size"}
PART_FLAGS = {"--vgg": "vgg", "--decoder": "decoder", "--transform": "transform"}
# Kept literal here (``distst.video.io.VIDEO_SUFFIXES``): building the parser imports nothing heavy.
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stylize", help="stylise a content image (or a directory of them, or a clip) with a style image, "
                                       "or translate it (cyclegan)",
                       description="Resizes the shorter side as the reference test scripts do. One content image "
                                   "is written to --out in the format of its suffix (.png, .jpg, ...); a directory "
                                   "of them to PNGs in the --out directory, skipping (and counting) unusable files. "
                                   "A clip (a video file, or a folder of numbered frames with --frames or a video "
                                   "--out) is written to a video file by --out's suffix (same rate and frame "
                                   "count) or to a folder of numbered PNG frames. A translation model (cyclegan) "
                                   "takes no --style: give its published generator by --weights "
                                   "generator_weights=latest_net_G.pth.")
    p.add_argument("--content", required=True,
                   help="content image, directory of images, video file, or folder of numbered frames")
    p.add_argument("--style", help="style image (style-transfer models; a translation model takes none)")
    p.add_argument("--out", required=True, help="output image file (one content image) or directory; for a clip a "
                                                f"video file ({', '.join(VIDEO_SUFFIXES)}) or a frames folder")
    p.add_argument("--frames", action="store_true",
                   help="--content is a folder of numbered frames of one clip (not separate images)")
    p.add_argument("--fps", type=float, help="frame rate of a frames-folder clip (default 25; a video keeps its own)")
    p.add_argument("--onnx", metavar="EXPORT_DIR", help="run a `distst export` directory's graphs (ONNX Runtime, CPU) "
                                                        "instead of a torch model")
    p.add_argument("--variant", choices=("fp32", "int8"), help="graphs of --onnx to run (default fp32)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads for --onnx (default: its own choice)")
    p.add_argument("--model", help=f"model name (see `distst models`; default {DEFAULT_MODEL})")
    p.add_argument("--width", type=float, help=f"channel multiplier of the weights (default {DEFAULT_WIDTH})")
    p.add_argument("--vgg", help="local vgg_normalised.pth")
    p.add_argument("--decoder", help="local decoder .pth (reference layout)")
    p.add_argument("--transform", help="local transform .pth (SANet transformer_iter_*.pth, MCCNet mcc_module_iter_*.pth, "
                                       "MANet ma_module_iter_*.pth, LST r41.pth, AdaAttN latest_net_transformer.pth)")
    add_weights_option(p, "any other weight file of the model, by its model.* key (repeatable), e.g. "
                          "adaattn3_weights=latest_net_adaattn_3.pth or generator_weights=latest_net_G.pth (cyclegan)")
    p.add_argument("--checkpoint", help="distst model file (model.pt) or run directory; replaces --vgg/--decoder")
    p.add_argument("--allow-random", action="store_true",
                   help="stylise even though some model part has no weight file (random weights: for tests)")
    p.add_argument("--alpha", type=float, help=f"style strength in [0, 1] (default {DEFAULT_ALPHA:g})")
    p.add_argument("--content-size", type=int, default=512,
                   help=f"shorter side of content images, at most {MAX_SIZE} (0 keeps it)")
    p.add_argument("--style-size", type=int,
                   help=f"shorter side of the style image, at most {MAX_SIZE} (0 keeps it; default {DEFAULT_STYLE_SIZE})")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.set_defaults(func=run)


def add_weights_option(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--weights KEY=FILE`` (repeatable): a model's weight files by their ``model.*`` keys (stylize, export)."""
    p.add_argument("--weights", action="append", default=[], metavar="KEY=FILE", help=help_text)


def check_numbers(args: argparse.Namespace) -> None:
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1] (got {args.alpha})")
    for flag, size in (("--content-size", args.content_size), ("--style-size", args.style_size)):
        if size is None:
            continue
        if not 0 <= size <= MAX_SIZE:
            raise UserError(f"{flag} must be in 0..{MAX_SIZE} (0 keeps the image's size; got {size})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.width is not None and not args.width > 0:
        raise UserError(f"--width must be positive (got {args.width})")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"--fps must be a positive frame rate (got {args.fps})")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1 (got {args.threads})")


def check_sources(args: argparse.Namespace) -> None:
    """One source of weights: reference files, a model file, or exported graphs (``--onnx``)."""
    weight_flags = [flag for flag, value in (("--vgg", args.vgg), ("--decoder", args.decoder),
                                             ("--transform", args.transform), ("--weights", args.weights)) if value]
    if not args.onnx:
        if args.variant or args.threads:
            raise UserError("--variant and --threads apply to --onnx EXPORT_DIR only")
        if args.checkpoint and weight_flags:
            raise UserError("give either --checkpoint or --vgg/--decoder/--transform/--weights, not both")
        return
    torch_flags = (["--checkpoint"] if args.checkpoint else []) + weight_flags + [
        flag for flag, value in (("--model", args.model), ("--width", args.width)) if value is not None]
    if torch_flags:
        raise UserError(f"--onnx runs the exported graphs (their manifest names the model): drop "
                        f"{', '.join(torch_flags)}, which pick a torch model")
    if args.alpha not in (None, 1.0):
        raise UserError("--alpha needs a torch model: exported graphs stylise at alpha 1")
    if args.device != "cpu":
        raise UserError(f"--onnx runs on the CPU (ONNX Runtime); drop --device {args.device}")
    from ..export.onnx_export import read_manifest

    variant = args.variant or DEFAULT_VARIANT
    variants = read_manifest(args.onnx).get("variants", {})  # ExportError (one line) when not an export
    if variant not in variants:
        raise UserError(f"--onnx {args.onnx} has no {variant} graphs; its variants: {', '.join(variants)}")


def is_clip(args: argparse.Namespace) -> bool:
    """Whether ``--content`` (which exists) is a clip: a video file, or a folder with --frames or a video --out."""
    content = Path(args.content)
    if content.is_file():
        if args.frames:
            raise UserError(f"--frames needs a folder of numbered frames as --content; {content} is a file")
        return content.suffix.lower() in VIDEO_SUFFIXES
    return args.frames or Path(args.out).suffix.lower() in VIDEO_SUFFIXES


def check_clip_arguments(args: argparse.Namespace, clip: bool) -> None:
    if args.fps is not None and not (clip and Path(args.content).is_dir()):
        raise UserError("--fps sets the rate of a frames-folder clip (--frames); a video keeps its own rate")


def check_device(name: str) -> Any:
    """The torch device ``name``, if this machine has it."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    return device


def missing_weights(model: Any) -> dict[str, str]:
    """The parts inference would run with random weights, each with the flag that gives them. A model may say so
    itself (``missing_inference_weights``: CycleGAN, whose discriminators never translate); else, for a
    style-transfer model, every group with a parameter that no given weight file sets (the encoder's file, or
    one of the model's ``part_weight_files``)."""
    own = getattr(model, "missing_inference_weights", None)
    if own is not None:
        return dict(own())
    covered = {id(p) for path, module in model.part_weight_files() if path for p in module.parameters()}
    if model.encoder_source:
        covered |= {id(p) for p in model.encoder.parameters()}
    return {part: WEIGHT_FLAGS.get(part, f"weights for {part}") for part, module in model.groups().items()
            if any(id(p) not in covered for p in module.parameters())}


def weight_options(model_name: str, pairs: list[str]) -> dict[str, str]:
    """``--weights KEY=FILE`` as ``model.*`` values; only the model's own weight-file keys."""
    from .. import registry

    valid = registry.model_record(model_name).weight_keys
    options = {}
    for pair in pairs:
        key, sep, path = pair.partition("=")
        if not sep or not path:
            raise UserError(f"--weights {pair!r}: expected KEY=FILE, e.g. {valid[-1]}=weights/file.pth")
        if key not in valid:
            raise UserError(f"--weights {key}: {model_name} has no weight file {key!r}; its keys: {', '.join(valid)}")
        options[key] = path
    return options


def checked_model_name(name: str | None) -> str:
    """``--model`` (default adain), if registered."""
    from ..models import available

    name = name or DEFAULT_MODEL
    if name not in available():
        raise UserError(f"unknown --model {name!r}; registered models: {', '.join(available())}")
    return name


def model_from_files(name: str, width: float | None, files: dict[str, str], allow_random: bool = False) -> Any:
    """``name`` at ``width`` built from its weight files (``model.*`` keys); refused when a part inference uses
    would have random weights, unless ``allow_random``."""
    from ..config import model_section
    from ..models import create

    model = create(model_section(name=name, width=width or DEFAULT_WIDTH, **files))
    missing = missing_weights(model)
    if missing and not allow_random:
        raise UserError(f"need {' and '.join(missing.values())} (local reference .pth files) or --checkpoint (a "
                        f"distst model file): {name}'s {' and '.join(missing)} would have random weights "
                        "(--allow-random if that is what you want)")
    return model


def reference_model(args: argparse.Namespace) -> Any:
    """The ``--model`` at ``--width`` with the reference weight files given (only the flags given: a model has
    only its own weight keys)."""
    name = checked_model_name(args.model)
    files = {key: path for key, path in (("vgg_weights", args.vgg), ("decoder_weights", args.decoder),
                                         ("transform_weights", args.transform)) if path}
    return model_from_files(name, args.width, {**files, **weight_options(name, args.weights)}, args.allow_random)


def model_name(args: argparse.Namespace, checkpoint: Any) -> str:
    """The model the arguments run: the export's (``--onnx``), the model file's, or ``--model``."""
    if args.onnx:
        from ..export.onnx_export import read_manifest

        return str(read_manifest(args.onnx)["model"]["name"])
    return checkpoint[0].name if checkpoint is not None else checked_model_name(args.model)


def check_inputs(args: argparse.Namespace, name: str) -> bool:
    """Refuse, in one line, a flag the model's ``inputs`` (its registry record) makes meaningless; whether it
    takes a style image."""
    from .. import registry

    record = registry.model_record(name)
    if record.inputs == "noise":
        from ..cli import COMMANDS

        where = (f"use `distst generate --model {name}`" if "distst.commands.generate" in COMMANDS else
                 "distst has no command that samples it yet (its training evaluates it)")
        raise UserError(f"{name} generates images from noise, without a content image: stylize does not apply; {where}")
    if record.inputs == "content":
        given = [flag for flag, attr in {**STYLE_FLAGS, **PART_FLAGS}.items() if getattr(args, attr) is not None]
        if given:
            keys = ", ".join(key for key in record.weight_keys if key not in ("inception_weights",))
            raise UserError(f"{name} translates a content image alone (its style is learnt) and its weight files go "
                            f"by --weights KEY=FILE ({keys}): drop {', '.join(given)}")
        return False
    if args.style is None:
        raise UserError(f"--style is required: {name} is a style-transfer model (a content and a style image)")
    return True


def refuse_non_finite(model: Any) -> None:
    """NaN or infinite weights (a diverged run, a damaged file) would stylise to a black image with exit 0."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"the model's {name} holds NaN or infinite values; refusing to stylise with it")


def stylizer(args: argparse.Namespace, device: Any, checkpoint: Any = None) -> Any:
    """The ``FrameStylizer`` the arguments name: exported graphs, a model file (``checkpoint``: its section and
    state as read), or reference weights."""
    if args.onnx:
        from ..export.stylizers import OnnxFrameStylizer

        return OnnxFrameStylizer(args.onnx, args.variant or DEFAULT_VARIANT, args.threads)
    from ..export.stylizers import TorchStylizer

    if checkpoint is not None:
        from ..models import create

        model = create(checkpoint[0], weights=checkpoint[1], source=str(args.checkpoint))
    else:
        model = reference_model(args)
    refuse_non_finite(model)
    return TorchStylizer(model, DEFAULT_ALPHA if args.alpha is None else args.alpha, device)


def run(args: argparse.Namespace) -> int:
    from ..stylize import OutputError, check_output, stylize_clip, stylize_files

    check_numbers(args)
    check_sources(args)
    checkpoint = None
    if args.checkpoint:  # read once, here: the model it holds decides which flags apply
        from ..models.io import read_model_file

        checkpoint = read_model_file(args.checkpoint)
    takes_style = check_inputs(args, model_name(args, checkpoint))
    content = Path(args.content)
    if not content.exists():
        raise UserError(f"--content {content} does not exist")
    if takes_style and not Path(args.style).is_file():
        raise UserError(f"--style {args.style} does not exist")
    clip = is_clip(args)
    check_clip_arguments(args, clip)
    if clip:
        from ..video.io import check_clip_output, probe_clip

        check_clip_output(args.out, content)  # ClipError: one line
        probe_clip(content, args.fps)  # readable, has frames, one size: before any model is built
    else:
        try:
            check_output(args.out, single=content.is_file())
        except OutputError as err:
            raise UserError(str(err)) from None
    device = check_device(args.device)
    runner = stylizer(args, device, checkpoint)
    style_size = DEFAULT_STYLE_SIZE if args.style_size is None else args.style_size
    if clip:
        done = stylize_clip(runner, content, args.style, args.out, content_size=args.content_size,
                            style_size=style_size, batch_size=args.batch_size, fps=args.fps)
        print(f"wrote {done.frames} frames: {done.out} ({done.frames_per_second:.1f} frames/s)")
        return 0
    result = stylize_files(runner, args.content, args.style, args.out, content_size=args.content_size,
                           style_size=style_size, batch_size=args.batch_size)
    report(result, args)
    return 0


def report(result: Any, args: argparse.Namespace) -> None:
    """What was written, and every skipped file with its reason; no usable image at all is an error."""
    import sys

    for err in result.skipped:
        print(f"skipped {err}", file=sys.stderr)
    skipped = ", ".join(f"{n} {reason}" for reason, n in result.skipped_by_reason().items())
    if not result.written:
        raise UserError(f"no usable content image in {args.content} (skipped: {skipped})")
    where = result.written[0] if len(result.written) == 1 and not result.skipped else args.out
    print(f"wrote {len(result.written)} image(s): {where}" + (f"; skipped {len(result.skipped)}: {skipped}"
                                                               if result.skipped else ""))
