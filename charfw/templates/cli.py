"""`charfw templates OUT`: the pose templates of every view code, as the seed's template folders held them.

    charfw templates OUT [--kind openpose|depth|lineart] [--family sd15|sdxl] [--codes f00,b02,...]
"""

from __future__ import annotations

from pathlib import Path

from charfw.errors import CharfwError

ALL_CODES = tuple(f"{s}{p}{y}" for s in "fb" for p in range(3) for y in range(8))


def write_templates(out: Path, kinds: tuple[str, ...], family, codes: tuple[str, ...] = ALL_CODES,
                    progress: bool = False) -> list[Path]:
    """Write OUT/<code>.png (one kind) or OUT/<kind>/<code>.png (several), atomically; returns the files."""
    from tqdm.auto import tqdm

    from charfw.fsutil import atomic_path
    from charfw.rules.viewcode import parse_view_code
    from charfw.templates.render import template

    views = []
    for code in codes:
        view = parse_view_code(code)
        if view is None or view.suffix:
            raise CharfwError(f"{code!r} is not a view code (f|b, pitch 0-2, yaw 0-7, e.g. f01)", field="--codes")
        views.append(view)
    written = []
    jobs = [(kind, view) for kind in kinds for view in views]
    for kind, view in tqdm(jobs, desc="templates", disable=not progress):
        path = (out if len(kinds) == 1 else out / kind) / f"{view.code}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            template(view, kind, family).save(tmp, format="PNG")
        written.append(path)
    return written


def cmd_templates(args) -> int:
    from charfw.families import family
    from charfw.templates.render import KINDS

    kinds = (args.kind,) if args.kind else KINDS
    codes = tuple(c.strip() for c in args.codes.split(",") if c.strip()) if args.codes else ALL_CODES
    written = write_templates(Path(args.out), kinds, family(args.family), codes, progress=True)
    print(f"wrote {len(written)} templates to {args.out} ({', '.join(kinds)}; {args.family})")
    return 0


def register(sub) -> None:
    from charfw.families import DEFAULT, FAMILIES
    from charfw.templates.render import KINDS

    p = sub.add_parser("templates", help="write pose templates (OpenPose, depth, line) for every view code")
    p.add_argument("out", help="folder: OUT/f00.png ... with --kind, else OUT/<kind>/f00.png ...")
    p.add_argument("--kind", choices=KINDS, help="one kind only (default: all three, in subfolders)")
    p.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT.name,
                   help=f"sets the size (default {DEFAULT.name}: {DEFAULT.sample_size})")
    p.add_argument("--codes", help="comma-separated view codes (default: all 48, f/b x pitch 0-2 x yaw 0-7)")
    p.set_defaults(func=cmd_templates)
