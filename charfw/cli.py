"""The `charfw` command: workspace scaffolding and checks, and standalone LoRA tools.

Each subcommand imports what it runs when it runs, so `charfw lora compress` starts without
the workspace schema, doit or the report, and the torch-free commands never import torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charfw.errors import CharfwError, os_error_message


def cmd_new(args) -> int:
    from charfw.scaffold import new_character
    from charfw.workspace import load_project

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
          f"{len(project.targets)} targets: {summarize(list(project.targets))}")
    return 0


def summarize(names: list[str], shown: int = 8) -> str:
    """A list a terminal line can hold: the first few names, then how many more (`doit list --all` has all)."""
    if len(names) <= shown + 1:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f" and {len(names) - shown} more (doit list --all shows every task)"


def cmd_plan(args) -> int:
    from charfw.plan import plan

    print(plan(Path(args.workspace).resolve(), args.target))
    return 0


def cmd_cluster(args) -> int:
    from charfw.cluster.driver import cluster_gpus
    from charfw.cluster.settings import cluster_settings
    from charfw.workspace import load_project

    settings = cluster_settings(load_project(Path(args.workspace).resolve()).config.cluster)
    if settings is None:
        raise CharfwError("no cluster: set `cluster:` in charfw.yaml or CHARFW_RAY_ADDRESS")
    nodes, gpus = cluster_gpus(settings)
    at_once = int(gpus // settings.gpus_per_training)
    print(f"{settings.address}: {nodes} node{'s' if nodes != 1 else ''}, {gpus:g} GPUs, "
          f"{at_once} training{'s' if at_once != 1 else ''} at once ({settings.gpus_per_training:g} GPU each)")
    print(f"build with: doit -n {max(1, at_once)}")
    return 0


def cmd_status(args) -> int:
    from charfw.plan import status

    print(status(Path(args.workspace).resolve(), args.target))
    return 0


def cmd_report(args) -> int:
    from charfw.pipeline.api import build_report

    page = build_report(Path(args.workspace).resolve(), args.target, wait=args.wait)
    print(page)
    if args.open:
        import webbrowser

        webbrowser.open(page.as_uri())
    return 0


def cmd_train(args) -> int:
    from charfw import lock
    from charfw.backends import train
    from charfw.fingerprint import digest_cache, is_trained
    from charfw.layout import Layout
    from charfw.workspace import load_project

    layout = Layout(load_project(Path(args.workspace).resolve()))
    lock.acquire(layout.build_dir, wait=args.wait, command=f"charfw train {args.target}")
    target = layout.project.targets.get(args.target)
    if target is None or target.lora is not None:
        trainable = [t.name for t in layout.project.trained_targets()]
        raise CharfwError(f"no trainable target {args.target!r}; trainable: {', '.join(trainable)}")
    req = layout.train_request(target)
    missing = [p for p in req.inputs if not Path(p).exists()]
    if missing:
        raise CharfwError(f"inputs not built yet ({missing[0]}): run `doit dataset:{target.name}` first"
                          + (f" and `doit train:{target.init}`" if target.init else ""))
    cache = digest_cache(layout.build_dir)
    if is_trained(req, cache) and not args.force:
        print(f"{req.output} is up to date (use --force to train again)")
        return 0
    from charfw.interrupt import deferred_signals

    with deferred_signals():
        train(req, cache)
    print(f"wrote {req.output}")
    return 0


def cmd_pick(args) -> int:
    from charfw.generate.pick import pick, picks_from
    from charfw.workspace import load_project

    project = load_project(Path(args.workspace).resolve())
    if args.from_file:
        wanted = picks_from(Path(args.from_file))
    elif args.code is not None and args.candidate is not None:
        wanted = {args.set: {args.code: args.candidate}}
    else:
        raise CharfwError("give a view code and a candidate number (charfw pick mira/face f00 1), or --from FILE")
    for set_id, codes in wanted.items():
        gen = project.generations.get(set_id)
        if gen is None:
            known = ", ".join(project.generations) or "none"
            raise CharfwError(f"no set {set_id!r} with a generate section (sets that have one: {known})")
        for code, n in codes.items():
            dest, written = pick(gen, project.build_dir, code, n, force=args.force)
            print(f"{dest}: {'candidate %d of %s' % (n, code) if written else 'already this candidate'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charfw", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
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

    p = sub.add_parser("plan", help="every task the next doit runs, in order and why, and each training's command line")
    p.add_argument("target", nargs="?", help="only this target (and its image sets)")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: .)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("cluster", help="the Ray cluster's nodes and GPUs, and the doit -n that uses them all")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: .)")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("status", help="each task of one target: up to date, or why it will run")
    p.add_argument("target")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: .)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="write build/report/ (contact sheets, per-character and per-target pages)")
    p.add_argument("target", nargs="?", help="print (and open) this target's page instead of the overview")
    p.add_argument("--open", action="store_true", help="open the page in the web browser")
    p.add_argument("--wait", action="store_true", help="wait for a build running in this workspace to finish")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: .)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train", help="train one target now, outside doit (its dataset must be built)")
    p.add_argument("target")
    p.add_argument("--force", action="store_true", help="train even if the LoRA is up to date")
    p.add_argument("--wait", action="store_true", help="wait for a build running in this workspace to finish")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: .)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pick", help="copy a generated candidate into its set as the view's image")
    p.add_argument("set", nargs="?", help="the set, e.g. mira/face")
    p.add_argument("code", nargs="?", help="the view code, e.g. f01")
    p.add_argument("candidate", nargs="?", type=int, help="the candidate's number (build/candidates/SET/CODE-N.png)")
    p.add_argument("--from", dest="from_file", help="a YAML file of picks: {mira/face: {f00: 1, f02: 0}}")
    p.add_argument("--force", action="store_true", help="replace a different image of that view already in the set")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: .)")
    p.set_defaults(func=cmd_pick)

    from charfw.lora.cli import register as register_lora
    from charfw.models.cli import register as register_model
    from charfw.templates.cli import register as register_templates

    register_lora(sub)
    register_model(sub)
    register_templates(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from charfw import process

    parser = build_parser()
    args = parser.parse_args(argv)
    process.setup()
    if args.debug:
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except CharfwError as exc:
        print(f"charfw: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"charfw: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("charfw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
