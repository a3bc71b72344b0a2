"""`ggtalker watermark {detect,embed}`; also `python -m ggtalker_jax.watermark.cli ...`.

detect FILE.mp4: exit 0 and print the decoded record as JSON (incl. chain) when a valid mark is present;
exit 3 when no mark is found; exit 4 when a mark is present but does not verify with the key.
embed IN.mp4 OUT.mp4: sign a payload and write a watermarked copy (audio copied); exit 0.
"""
from __future__ import annotations

import argparse
import json
import sys

from ggtalker_jax.watermark.keys import load_key
from ggtalker_jax.watermark.marking import detect_video, mark_video
from ggtalker_jax.watermark.payload import Payload
from ggtalker_jax.watermark.visible import POSITIONS, VisibleMarkConfig

EXIT_VALID, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID = 0, 1, 2, 3, 4


def build_parser(prog: str = "ggtalker watermark") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Visible + invisible signed watermarks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("detect", "embed"):
        p = sub.add_parser(name)
        p.add_argument("--key-type", choices=("hmac", "ed25519"), default="hmac")
        p.add_argument("--key-file", default=None, help="default: env GGTALKER_WATERMARK_KEY or "
                       "~/.config/ggtalker/watermark.key (created 0600 on first use)")
        if name == "detect":
            p.add_argument("file")
            p.add_argument("--max-frames", type=int, default=75, help="frames read (0 = all)")
        else:
            p.add_argument("input")
            p.add_argument("output")
            p.add_argument("--subject-id", default="unknown", help="subject/model id (stored hashed)")
            p.add_argument("--audio", default=None, help="driving audio file (stored as SHA-256)")
            p.add_argument("--no-visible-mark", action="store_true",
                           help="skip the visible overlay (recorded in the signed payload)")
            p.add_argument("--text", default="AI-generated")
            p.add_argument("--position", choices=POSITIONS, default="bottom-right")
            p.add_argument("--opacity", type=float, default=0.55)
            p.add_argument("--crf", type=int, default=18)
            p.add_argument("--strength", type=float, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """argv[0] is the program name (as `ggtalker`'s dispatcher and sys.argv give it)."""
    argv = list(sys.argv if argv is None else argv)
    args = build_parser(prog=argv[0] if argv else "ggtalker watermark").parse_args(argv[1:])
    try:
        key = load_key(args.key_type, args.key_file)
        if args.command == "detect":
            result = detect_video(args.file, key, max_frames=args.max_frames or None)
            if not result.present:
                print(f"no ggtalker watermark found in {args.file}", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(json.dumps(result.to_json_dict(), indent=2))
            if not result.valid:
                print(f"watermark present in {args.file} but does not verify: {result.reason}", file=sys.stderr)
                return EXIT_INVALID
            return EXIT_VALID
        payload = Payload.create(args.subject_id, args.audio, visible_mark=not args.no_visible_mark)
        visible_config = VisibleMarkConfig(text=args.text, position=args.position, opacity=args.opacity)
        record = mark_video(args.input, args.output, payload, key, visible=not args.no_visible_mark,
                            crf=args.crf, strength=args.strength, visible_config=visible_config)
        print(json.dumps({"output": args.output, "record_digest": record.digest(),
                          "payload": record.payload.to_dict()}, indent=2))
        return EXIT_VALID
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
