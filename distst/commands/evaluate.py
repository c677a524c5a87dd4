"""``distst evaluate temporal``: the temporal error of a model file or an exported graph, per clip.

Clips come with their flow: the synthetic set every run reports on (exact flow), a user's clip directories with
flow files (Sintel layout), or a video / frames folder whose flow torchvision's RAFT computes from a local weights
file. Each clip is stylised with one style image (the i-th clip with the i-th ``--style``, cycling).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model: `evaluate temporal` (warping error on clips with flow)")
    kinds = p.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")
    t = kinds.add_parser("temporal", help="Lai et al.'s warping error (and its short-term L1 variant) per clip",
                         description="Stylises clips with known or estimated optical flow and reports, per clip, "
                                     "E_warp = sum M (W(O_t+1) - O_t)^2 / (C sum M) and its L1 variant (docs/video.md).")
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a distst model file (model.pt) or run directory")
    source.add_argument("--onnx", metavar="EXPORT_DIR", help="an export directory (`distst export`): its graph is run")
    t.add_argument("--variant", default="fp32", help="with --onnx: fp32 or int8 (default fp32)")
    t.add_argument("--style", action="append", required=True, help="style image (repeatable: clip i takes style i)")
    t.add_argument("--style-size", type=int, default=256, help="shorter side of the style images (default 256)")
    t.add_argument("--synthetic", type=int, default=2, help="synthetic clips with exact flow (default 2; 0: none)")
    t.add_argument("--frames", type=int, default=4, help="frames of each synthetic clip (default 4)")
    t.add_argument("--size", type=int, default=128, help="side of the synthetic clips' frames (default 128)")
    t.add_argument("--clip", action="append", default=[], metavar="DIR",
                   help="a clip directory with frames/ and flow/ (optional masks/, occlusions/, flow_backward/)")
    t.add_argument("--video", action="append", default=[], metavar="CLIP",
                   help="a video file or frames folder whose flow RAFT estimates (needs --raft)")
    t.add_argument("--raft", metavar="FILE", help="local torchvision RAFT weights (raft_large or raft_small layout)")
    t.add_argument("--video-size", type=int, default=256, help="shorter side of --video frames (default 256)")
    t.add_argument("--write-clips", metavar="DIR", help="also write the synthetic clips (frames, flow, masks) there")
    t.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    t.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.video and not args.raft:
        raise UserError("--video needs --raft FILE (local RAFT weights): its flow is estimated; clips with flow "
                        "files go to --clip")
    for flag, paths in (("--style", args.style), ("--clip", args.clip), ("--video", args.video),
                        ("--raft", [args.raft] if args.raft else [])):
        for path in paths:
            if not Path(path).exists():
                raise UserError(f"{flag} {path} does not exist")
    if args.synthetic < 0 or args.frames < 2 or args.size < 16:
        raise UserError("--synthetic must be >= 0, --frames >= 2 and --size >= 16")
    if not (args.synthetic or args.clip or args.video):
        raise UserError("no clips: give --synthetic N, --clip DIR or --video CLIP")


def _forward(args: argparse.Namespace) -> tuple[Any, int, int]:
    """(content, style) -> image, and the input multiple and minimum size it needs."""
    if args.onnx:
        from ..export.runtime import OnnxStylizer
        from ..video.evaluation import graph_forward

        graph = OnnxStylizer(args.onnx, args.variant)  # refuses a missing variant in one line
        return graph_forward(graph), graph.manifest["input_multiple"], graph.manifest["min_size"]  # one set of sessions
    from ..models.io import load_model

    model, _ = load_model(args.checkpoint)
    return model.eval(), model.input_multiple, model.min_size


def _clips(args: argparse.Namespace, multiple: int, min_size: int) -> list[tuple[str, Any]]:
    from ..video.clips import raft_flow_clip, synthetic_clips, write_flow_clip
    from ..video.evaluation import fitted_size, read_user_clip

    clips: list[tuple[str, Any]] = []
    if args.synthetic:
        made = synthetic_clips(args.synthetic, args.frames, fitted_size(args.size, multiple, min_size))
        for clip in made:
            if args.write_clips:
                write_flow_clip(Path(args.write_clips) / clip.name, clip)
        clips += [("synthetic (exact flow)", c) for c in made]
    clips += [("flow files", read_user_clip(path, multiple, min_size)) for path in args.clip]
    if args.video:
        from ..video.flow import load_raft
        from ..video.io import read_clip

        raft = load_raft(args.raft)
        for path in args.video:
            frames, _ = read_clip(path, args.video_size, multiple, min_size)
            clips.append(("RAFT flow", raft_flow_clip(frames, raft, name=Path(path).stem)))
    return clips


def run(args: argparse.Namespace) -> int:
    import torch

    from ..images import load_image
    from ..video.temporal import temporal_errors

    _check(args)
    forward, multiple, min_size = _forward(args)
    styles = [load_image(p, args.style_size, multiple, min_size).unsqueeze(0) for p in args.style]
    rows = []
    with torch.no_grad():
        for i, (source, clip) in enumerate(_clips(args, multiple, min_size)):
            style = styles[i % len(styles)]
            errors = temporal_errors(lambda frames, s=style: forward(frames, s.expand(len(frames), -1, -1, -1)),
                                     [clip])
            rows.append({"clip": clip.name, "source": source, "frames": int(clip.frames.shape[0]),
                         "size": list(clip.frames.shape[-2:]), "style": Path(args.style[i % len(styles)]).name,
                         **errors})
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.checkpoint or f"{args.onnx} ({args.variant})",
                                               "clips": rows}, indent=2) + "\n")
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| clip | flow | frames | size | style | temporal error (L2) | temporal L1 | output std |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['clip']} | {r['source']} | {r['frames']} | {r['size'][0]}x{r['size'][1]} | {r['style']} | "
              f"{r['temporal_error']:.5g} | {r['temporal_l1']:.5g} | {r['output_std']:.4f} |" for r in rows]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("temporal_error", "temporal_l1", "output_std")}
    lines.append(f"| mean | | | | | {mean['temporal_error']:.5g} | {mean['temporal_l1']:.5g} | "
                 f"{mean['output_std']:.4f} |")
    return "\n".join(lines)
