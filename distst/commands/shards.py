"""``distst shards build|verify|sample``: make, check and bundle WebDataset shards."""

from __future__ import annotations

import argparse
import os

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="build, verify and bundle WebDataset shards of content/style images")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="images below SRC (COCO, WikiArt tree) or existing tars -> shards + manifest")
    build.add_argument("src", help="folder searched recursively, a .tar, or a brace pattern of .tar shards")
    build.add_argument("--out", required=True, help="output folder DIR (DIR/NAME-000000.tar ..., DIR/NAME.json)")
    build.add_argument("--name", required=True, help="shard name prefix, e.g. content or style")
    build.add_argument("--resize", type=int, default=512, help="shorter side in pixels (images are never enlarged "
                       "unless --upscale; smaller ones are counted as 'small' either way)")
    build.add_argument("--upscale", action="store_true", help="enlarge images whose shorter side is below --resize")
    build.add_argument("--shard-size", type=int, default=1000, help="inputs per shard (skipped ones leave a shard short)")
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode/resize/encode processes")
    build.add_argument("--quality", type=int, default=95, help="JPEG quality (1-100)")
    build.add_argument("--no-labels", action="store_true", help="do not record sub-folder names as 'style' labels")
    build.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated interruption
    build.set_defaults(func=run_build)

    verify = actions.add_parser("verify", help="re-read every shard of a manifest; non-zero exit on any mismatch")
    verify.add_argument("manifest", help="DIR/NAME.json written by 'distst shards build'")
    verify.set_defaults(func=run_verify)

    sample = actions.add_parser("sample", help="build the bundled sample shards (scikit-image photos + procedural styles)")
    sample.add_argument("--out", default="shards/sample", help="output folder (default shards/sample)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the procedural style images")
    sample.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    sample.set_defaults(func=run_sample)


def _check_build_args(args: argparse.Namespace) -> None:
    if args.resize < 8:
        raise UserError(f"--resize must be at least 8 (got {args.resize})")
    if args.shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 (got {args.shard_size})")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be in 1..100 (got {args.quality})")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")


def describe(manifest: dict) -> str:
    reasons = ", ".join(f"{n} {reason}" for reason, n in manifest["skipped_by_reason"].items()) or "none"
    converted = ", ".join(f"{n} {mode}" for mode, n in manifest["converted"].items()) or "none"
    speed = manifest["build"]["images_per_s"]
    rate = f"{speed:.1f} images/s" if speed else "nothing to encode"
    return (f"{manifest['name']}: {manifest['samples']} samples in {len(manifest['shards'])} shards from "
            f"{manifest['inputs']} inputs; skipped: {reasons}; converted to RGB: {converted}; "
            f"smaller than --resize ({'enlarged' if manifest['options']['upscale'] else 'kept as they are'}): "
            f"{manifest['small']}; "
            f"{rate} "
            f"({manifest['build']['resumed_shards']} shards kept from an earlier run)")


def run_build(args: argparse.Namespace) -> int:
    from ..data.manifest import manifest_path
    from ..data.shards import BuildOptions, build_shards

    _check_build_args(args)
    options = BuildOptions(resize=args.resize, shard_size=args.shard_size, quality=args.quality,
                           labels=not args.no_labels, upscale=args.upscale)
    try:
        manifest = build_shards(args.src, args.out, args.name, options=options, workers=args.workers,
                                stop_after=args.stop_after)
    except ValueError as err:
        raise UserError(str(err)) from None
    if manifest is None:
        print(f"stopped after {args.stop_after} new shards; run the same command again to resume")
        return 0
    print(describe(manifest))
    print(f"manifest: {manifest_path(args.out, args.name)}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from ..data.manifest import read_manifest, verify_manifest

    try:
        problems = verify_manifest(args.manifest)
    except ValueError as err:
        raise UserError(str(err)) from None
    for problem in problems:
        print(f"MISMATCH {problem}")
    if problems:
        print(f"{args.manifest}: {len(problems)} problem(s)")
        return 1
    manifest = read_manifest(args.manifest)
    print(f"{args.manifest}: ok ({len(manifest['shards'])} shards, {manifest['samples']} samples, checksums match)")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from ..data.sample import build_sample

    try:
        manifests = build_sample(args.out, seed=args.seed, workers=args.workers)
    except ImportError as err:
        raise UserError(f"{err}; install the 'samples' extra (pip install -e '.[samples]')") from None
    for manifest in manifests.values():
        print(describe(manifest))
    print(f"README: {os.path.join(args.out, 'README.md')}")
    return 0
