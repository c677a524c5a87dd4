"""``distst stylize``: stylise a content image (or a directory) with a style image.

Every argument is checked before a model is built or an image decoded, and every model part must have
weights (reference files or a distst model file) unless ``--allow-random`` says random weights are meant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError

# The largest --content-size/--style-size: the same limit as every side of a loaded image (images.MAX_SIDE).
MAX_SIZE = 8192
WEIGHT_FLAGS = {"encoder": "--vgg", "transform": "--transform", "decoder": "--decoder"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stylize", help="stylise a content image (or a directory of them) with a style image",
                       description="Resizes the shorter side as the reference test scripts do. One content image "
                                   "is written to --out in the format of its suffix (.png, .jpg, ...); a directory "
                                   "of them to PNGs in the --out directory, skipping (and counting) unusable files.")
    p.add_argument("--content", required=True, help="content image or directory of images")
    p.add_argument("--style", required=True, help="style image")
    p.add_argument("--out", required=True, help="output image file (one content image) or directory")
    p.add_argument("--model", default="adain", help="model name (see `distst models`)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of the weights (default 1.0)")
    p.add_argument("--vgg", help="local vgg_normalised.pth")
    p.add_argument("--decoder", help="local decoder .pth (reference layout)")
    p.add_argument("--transform", help="local transform .pth (SANet transformer_iter_*.pth, MCCNet mcc_module_iter_*.pth, "
                                       "MANet ma_module_iter_*.pth, LST r41.pth, AdaAttN latest_net_transformer.pth)")
    p.add_argument("--weights", action="append", default=[], metavar="KEY=FILE",
                   help="any other weight file of the model, by its model.* key (repeatable), e.g. "
                        "adaattn3_weights=latest_net_adaattn_3.pth")
    p.add_argument("--checkpoint", help="distst model file (model.pt) or run directory; replaces --vgg/--decoder")
    p.add_argument("--allow-random", action="store_true",
                   help="stylise even though some model part has no weight file (random weights: for tests)")
    p.add_argument("--alpha", type=float, default=1.0, help="style strength in [0, 1]")
    p.add_argument("--content-size", type=int, default=512,
                   help=f"shorter side of content images, at most {MAX_SIZE} (0 keeps it)")
    p.add_argument("--style-size", type=int, default=512,
                   help=f"shorter side of the style image, at most {MAX_SIZE} (0 keeps it)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.set_defaults(func=run)


def check_numbers(args: argparse.Namespace) -> None:
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1] (got {args.alpha})")
    for flag, size in (("--content-size", args.content_size), ("--style-size", args.style_size)):
        if not 0 <= size <= MAX_SIZE:
            raise UserError(f"{flag} must be in 0..{MAX_SIZE} (0 keeps the image's size; got {size})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if not args.width > 0:
        raise UserError(f"--width must be positive (got {args.width})")


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


def _parts_without_weights(model: Any) -> list[str]:
    """Model parts with a parameter that no given weight file sets (the encoder's file, or one of the model's
    ``part_weight_files``)."""
    covered = {id(p) for path, module in model.part_weight_files() if path for p in module.parameters()}
    if model.encoder_source:
        covered |= {id(p) for p in model.encoder.parameters()}
    return [part for part, module in model.groups().items() if any(id(p) not in covered for p in module.parameters())]


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


def reference_model(args: argparse.Namespace) -> Any:
    """The ``--model`` at ``--width`` with the reference weight files given."""
    from ..config import model_section
    from ..models import available, create

    if args.model not in available():
        raise UserError(f"unknown --model {args.model!r}; registered models: {', '.join(available())}")
    files = {"vgg_weights": args.vgg, "decoder_weights": args.decoder, "transform_weights": args.transform,
             **weight_options(args.model, args.weights)}
    model = create(model_section(name=args.model, width=args.width, **files))
    missing = _parts_without_weights(model)
    if missing and not args.allow_random:
        flags = " and ".join(WEIGHT_FLAGS.get(part, f"weights for {part}") for part in missing)
        raise UserError(f"need {flags} (local reference .pth files) or --checkpoint (a distst model file): "
                        f"{args.model}'s {' and '.join(missing)} would have random weights "
                        "(--allow-random if that is what you want)")
    return model


def refuse_non_finite(model: Any) -> None:
    """NaN or infinite weights (a diverged run, a damaged file) would stylise to a black image with exit 0."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"the model's {name} holds NaN or infinite values; refusing to stylise with it")


def run(args: argparse.Namespace) -> int:
    from ..stylize import OutputError, check_output, stylize_files

    check_numbers(args)
    if args.checkpoint and (args.vgg or args.decoder or args.transform or args.weights):
        raise UserError("give either --checkpoint or --vgg/--decoder/--transform/--weights, not both")
    content = Path(args.content)
    if not content.exists():
        raise UserError(f"--content {content} does not exist")
    try:
        check_output(args.out, single=content.is_file())
    except OutputError as err:
        raise UserError(str(err)) from None
    device = check_device(args.device)
    if args.checkpoint:
        from ..models.io import load_model

        model, _ = load_model(args.checkpoint)
    else:
        model = reference_model(args)
    refuse_non_finite(model)
    result = stylize_files(model, args.content, args.style, args.out, alpha=args.alpha,
                           content_size=args.content_size, style_size=args.style_size,
                           batch_size=args.batch_size, device=str(device))
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
