"""The `charfw` command: workspace scaffolding and checks, and standalone LoRA tools."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charfw.errors import CharfwError


def cmd_new(args) -> int:
    from charfw.config.workspace import load_project
    from charfw.scaffold import new_character

    root = Path(args.workspace)
    try:
        chars = root / load_project(root).config.characters
    except CharfwError:
        chars = root / "characters"  # a workspace being started may not validate yet
    outfits = dict(o.split(":", 1) if ":" in o else (o, f"{args.keyword or args.name}{o}") for o in args.outfit)
    manifest = new_character(chars, args.name, keyword=args.keyword, class_word=args.class_word,
                             symmetric=not args.asymmetric, background=args.background, outfits=outfits)
    print(f"created {manifest}; put view-coded images in {manifest.parent / 'face'} "
          f"(see VIEW_CODES.md there), then run `charfw check` and `doit`")
    return 0


def cmd_check(args) -> int:
    from charfw.check import check_project

    project, warnings = check_project(Path(args.workspace))
    for w in warnings:
        print(f"warning: {w}")
    n_images = sum(len(s.sources) for s in project.sets.values())
    print(f"ok: {len(project.characters)} characters, {len(project.sets)} image sets ({n_images} images), "
          f"{len(project.targets)} targets: {', '.join(project.targets)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charfw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("new", help="scaffold a character (manifest, image folders, view-code note)")
    p.add_argument("name", help="folder name under characters/ (also the default keyword)")
    p.add_argument("--keyword", help="trigger word (default: NAME)")
    p.add_argument("--class", dest="class_word", default="girl", help="class word (default: girl)")
    p.add_argument("--asymmetric", action="store_true", help="needs yaws 0-7 and never flips")
    p.add_argument("--background", choices=["black", "white"], default="black")
    p.add_argument("--outfit", action="append", default=[], metavar="NAME[:KEYWORD]",
                   help="add an outfit folder (repeatable); keyword defaults to <keyword><NAME>")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: .)")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("check", help="validate every manifest and image without building")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: .)")
    p.set_defaults(func=cmd_check)

    from charfw.lora.cli import register as register_lora

    register_lora(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CharfwError as exc:
        print(f"charfw: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
