"""``distst stylize``: stylise images with reference weights or a distst model file."""

from __future__ import annotations

import argparse

from ..cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stylize", help="stylise a content image (or a directory of them) with a style image",
                       description="Resizes the shorter side as the reference test scripts do and writes PNGs.")
    p.add_argument("--content", required=True, help="content image or directory of images")
    p.add_argument("--style", required=True, help="style image")
    p.add_argument("--out", required=True, help="output .png (single content image) or directory")
    p.add_argument("--model", default="adain", help="model name (see `distst models`)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of the weights (default 1.0)")
    p.add_argument("--vgg", help="local vgg_normalised.pth")
    p.add_argument("--decoder", help="local decoder .pth (reference layout)")
    p.add_argument("--transform", help="local transform .pth (SANet transformer_iter_*.pth)")
    p.add_argument("--checkpoint", help="distst model file (model.pt) or run directory; replaces --vgg/--decoder")
    p.add_argument("--alpha", type=float, default=1.0, help="style strength in [0, 1]")
    p.add_argument("--content-size", type=int, default=512, help="shorter side of content images (0 keeps it)")
    p.add_argument("--style-size", type=int, default=512, help="shorter side of the style image (0 keeps it)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import ModelConfig
    from ..models import build
    from ..models.io import load_model
    from ..stylize import stylize_files

    if args.checkpoint and (args.vgg or args.decoder or args.transform):
        raise UserError("give either --checkpoint or --vgg/--decoder/--transform, not both")
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
    else:
        if not (args.vgg and args.decoder):
            raise UserError("need --vgg and --decoder (reference .pth files), or --checkpoint (a distst model file)")
        try:
            cfg = ModelConfig(name=args.model, width=args.width, vgg_weights=args.vgg,
                              decoder_weights=args.decoder, transform_weights=args.transform)
        except ValueError as err:
            raise UserError(str(err)) from None
        model = build(cfg)
    written = stylize_files(model, args.content, args.style, args.out, alpha=args.alpha,
                            content_size=args.content_size, style_size=args.style_size,
                            batch_size=args.batch_size, device=args.device)
    print(f"wrote {len(written)} image(s): {written[0] if len(written) == 1 else args.out}")
    return 0
