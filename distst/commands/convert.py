"""``distst convert-vgg``: a local torchvision VGG-19 state dict -> the vgg_normalised.pth layout."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-vgg", help="convert a local torchvision VGG-19 state dict file (no download)")
    p.add_argument("src", help="torchvision vgg19 state dict (.pth), e.g. vgg19-dcbb9e9d.pth")
    p.add_argument("--out", required=True, help="where to write the vgg_normalised-layout file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.vgg import convert_torchvision_vgg19

    print(f"wrote {convert_torchvision_vgg19(args.src, args.out)}")
    return 0
