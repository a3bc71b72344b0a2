"""`ggtalker watermark detect|embed` (absl flags); also `python -m ggtalker_jax.cli.watermark ...`.

    ggtalker watermark detect FILE.mp4 [--max_frames 75] [--key_file PATH] [--key_type hmac|ed25519]
    ggtalker watermark embed IN.mp4 OUT.mp4 [--subject_id ID] [--audio WAV] [--novisible_mark] ...

Exit codes (`detect`): 0 a valid mark (the decoded record is printed as JSON); 3 no mark found;
4 a mark is present but its tag or signature does not verify with the key; 5 the mark verifies but the
frames do not match the signed record (perceptual content hash, or a claimed visible mark that is not
there): the record was copied onto other frames; 6 no watermark key is configured, or the key file
does not exist. Both: 1 bad input (missing/corrupt file), 2 bad flags.
"""
from __future__ import annotations

import json
import sys

from absl import flags

from ggtalker_jax.cli.flags import parse_flags
from ggtalker_jax.watermark import marking
from ggtalker_jax.watermark.invisible import InvisibleConfig
from ggtalker_jax.watermark.keys import KeyNotConfiguredError, load_key
from ggtalker_jax.watermark.payload import Payload
from ggtalker_jax.watermark.visible import POSITIONS, VisibleMarkConfig

EXIT_VALID, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_CONTENT_MISMATCH, EXIT_NO_KEY = 0, 1, 2, 3, 4, 5, 6
STATUS_EXIT = {marking.VALID: EXIT_VALID, marking.NO_MARK: EXIT_NOT_FOUND, marking.BAD_SIGNATURE: EXIT_INVALID,
               marking.CONTENT_MISMATCH: EXIT_CONTENT_MISMATCH}
ACTIONS = {"detect": "FILE.mp4", "embed": "IN.mp4 OUT.mp4"}


def define_flags(action: str) -> flags.FlagValues:
    """The absl flags of `action` ("detect" or "embed") in a fresh FlagValues."""
    fv = flags.FlagValues()
    flags.DEFINE_enum("key_type", "hmac", ["hmac", "ed25519"], "signature scheme of the key", flag_values=fv)
    flags.DEFINE_string("key_file", None, "key file (default: env GGTALKER_WATERMARK_KEY, else "
                        "~/.config/ggtalker/watermark.key; only `embed` creates a missing key)", flag_values=fv)
    if action == "detect":
        flags.DEFINE_integer("max_frames", 75, "frames read from the start of the video (0 = all)", lower_bound=0,
                             flag_values=fv)
    else:
        flags.DEFINE_string("subject_id", "unknown", "subject/model id (stored hashed)", flag_values=fv)
        flags.DEFINE_string("audio", None, "driving audio file (stored as SHA-256)", flag_values=fv)
        flags.DEFINE_bool("visible_mark", True, "draw the visible overlay (--novisible_mark skips it; the "
                          "choice is recorded in the signed payload)", flag_values=fv)
        flags.DEFINE_string("text", "AI-generated", "text of the visible overlay (ASCII)", flag_values=fv)
        flags.DEFINE_enum("position", "bottom-right", list(POSITIONS), "corner of the visible overlay", flag_values=fv)
        flags.DEFINE_float("opacity", 0.55, "opacity of the box behind the text, in [0, 1]", lower_bound=0.0,
                           upper_bound=1.0, flag_values=fv)
        flags.DEFINE_integer("crf", 18, "H.264 constant rate factor of the output", lower_bound=0, upper_bound=51,
                             flag_values=fv)
        flags.DEFINE_float("min_psnr", InvisibleConfig().min_psnr_db, "PSNR (dB) the invisible mark keeps at "
                           "least; lower = stronger, more robust mark", lower_bound=30.0, upper_bound=60.0,
                           flag_values=fv)
    return fv


def usage(prog: str) -> str:
    lines = [f"usage: {prog} ACTION ARGS [--flags]", ""]
    for action, args in ACTIONS.items():
        lines += [f"{prog} {action} {args}", define_flags(action).get_help(), ""]
    lines.append(__doc__.split("\n\n", 2)[2].strip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """argv[0] is the program name (as `ggtalker`'s dispatcher and sys.argv give it)."""
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "ggtalker watermark"
    rest = argv[1:]
    if not rest or rest[0] in ("-h", "--help", "help"):
        print(usage(prog))
        return EXIT_VALID
    action = rest[0]
    if action not in ACTIONS:
        print(f"{prog}: unknown action {action!r}; expected one of {sorted(ACTIONS)}\n\n{usage(prog)}", file=sys.stderr)
        return EXIT_USAGE
    fv = define_flags(action)
    positional = parse_flags(fv, [f"{prog} {action}", *rest[1:]])
    wanted = len(ACTIONS[action].split())
    if len(positional) != wanted:
        print(f"{prog} {action}: expected {ACTIONS[action]}, got {positional}\n\n{fv.get_help()}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if action == "detect":
            key = load_key(fv.key_type, fv.key_file)
            result = marking.detect_video(positional[0], key, max_frames=fv.max_frames or None)
            if not result.present:
                print(f"no ggtalker watermark found in {positional[0]}", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(json.dumps(result.to_json_dict(), indent=2))
            if not result.valid:
                print(f"watermark in {positional[0]} is not valid: {result.reason}", file=sys.stderr)
            return STATUS_EXIT[result.status]
        key = load_key(fv.key_type, fv.key_file, create=True)
        payload = Payload.create(fv.subject_id, fv.audio, visible_mark=fv.visible_mark)
        visible_config = VisibleMarkConfig(text=fv.text, position=fv.position, opacity=fv.opacity)
        record = marking.mark_video(positional[0], positional[1], payload, key, visible=fv.visible_mark,
                                    crf=fv.crf, visible_config=visible_config,
                                    config=InvisibleConfig(min_psnr_db=fv.min_psnr))
        print(json.dumps({"output": positional[1], "record_digest": record.digest(),
                          "payload": record.payload.to_dict()}, indent=2))
        return EXIT_VALID
    except KeyNotConfiguredError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NO_KEY
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
