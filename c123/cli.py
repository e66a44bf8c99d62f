"""The `c123` command: reconstruct one image, write tiny models, and run the benchmark tools.

`evaluate`, `report` and `fetch` live with the pipeline (flows/, reports/, datasets/); they are imported
only when called, so the method package itself never loads Prefect or Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from c123.errors import C123Error


def reconstruct_main(args: argparse.Namespace) -> int:
    """`c123 reconstruct IMAGE --prompt TEXT ...`: one image to OUT/{result.json,mesh,video,views}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from c123.config import apply_overrides, preset
    from c123.preprocess import load_input
    from c123.provenance import resolve_device
    from c123.reconstruct import check_prompt, load_priors, reconstruct

    cfg = preset(args.preset)
    cfg.seed = args.seed
    cfg.schedule.variant = args.variant
    apply_overrides(cfg, args.set or [])
    inp = load_input(args.image, mask=args.mask, depth=args.depth, prompt=args.prompt or "")
    out = Path(args.out or Path("outputs") / Path(args.image).stem)
    check_prompt(inp, cfg)  # bad input and missing weights fail before the progress display starts
    priors = load_priors(cfg, resolve_device(cfg.train.device))

    columns = [TextColumn("{task.fields[stage]:>6}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("w3D {task.fields[w3d]:.3f} w2D {task.fields[w2d]:.3f} S {task.fields[s]}"),
               TimeElapsedColumn()]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("reconstruct", total=cfg.train.nerf_iters + cfg.train.dmtet_iters,
                            stage="load", w3d=1.0, w2d=0.0, s="-")

        def progress(info: dict) -> None:
            if info["stage"] == "notice":
                bar.console.print(f"notice: {info['message']}")
                return
            s = info.get("S")
            bar.update(task, completed=info["step"], stage=info["stage"], w3d=info.get("w3d", 1.0),
                       w2d=info.get("w2d", 0.0), s="-" if s is None else f"{s:.4f}")
            if info["stage"] == "resume":
                bar.console.print(f"resumed from step {info['step']}")

        result = reconstruct(inp, cfg, out, priors=priors, progress=progress)
    print(f"switch iteration: {result['switch_iteration']}; wrote {out / 'result.json'}, {out / 'mesh'}, "
          f"{out / 'video'}, {out / 'views'}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    return 0


def models_main(args: argparse.Namespace) -> int:
    """`c123 models tiny DIR`: tiny random-weight priors in the real on-disk formats."""
    from c123.priors.tiny import write_tiny_models

    for name, path in write_tiny_models(args.dir).items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="c123", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="one image -> textured mesh, turntable video, orbit views")
    rec.add_argument("image", help="RGBA image (or RGB with --mask)")
    rec.add_argument("--prompt", default="", help="text prompt (needed by Stable Diffusion and the detector)")
    rec.add_argument("--mask", help="mask PNG for an RGB image")
    rec.add_argument("--depth", help="depth PNG (larger = farther); without it the depth loss is off")
    rec.add_argument("--preset", default="paper", help="paper | fast | tiny")
    rec.add_argument("--variant", default="consistent123",
                     help="consistent123 | 3d-only | dynamic-only | fixed-switch | 3d-then-2d")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--out", help="output folder (default outputs/<image name>)")
    rec.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.nerf_iters=100")
    rec.set_defaults(run=reconstruct_main)

    models = sub.add_parser("models", help="model utilities")
    models_sub = models.add_subparsers(dest="what", required=True)
    tiny = models_sub.add_parser("tiny", help="write tiny random-weight priors to DIR")
    tiny.add_argument("dir")
    tiny.set_defaults(run=models_main)

    for name, target, text in (("evaluate", "flows.evaluate:evaluate_main", "run the benchmark flow on a dataset"),
                               ("report", "reports.build:main", "tables, plots and HTML from run folders"),
                               ("fetch", "datasets.fetch:main", "download a benchmark dataset")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.set_defaults(delegate=target)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "0" if os.environ.get("C123_ALLOW_DOWNLOAD") == "1" else "1")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "delegate", None):
            import importlib

            module, func = args.delegate.split(":")
            return int(getattr(importlib.import_module(module), func)(rest) or 0)
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        return args.run(args)
    except C123Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
