"""The method's commands: `reconstruct` (one image to a mesh), `preprocess` (a photo to the files
`reconstruct` reads, to inspect and fix) and `models tiny` (tiny test models).

`build_parser` and `main` take further sub-commands from the layer above (which installs the `c123` console
script with them); this package itself knows nothing of them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

from c123.errors import C123Error

AddCommands = Callable[[argparse._SubParsersAction], None]
"""Adds sub-commands to the parser; each sets `run(args) -> exit status` (args.rest: unparsed arguments)."""


class OneLineParser(argparse.ArgumentParser):
    """An argument error is a one-line C123Error (main prints it), not a usage dump."""

    def error(self, message: str):
        raise C123Error(f"{self.prog}: {message} (see {self.prog} --help)")


def count(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    return parse


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during a command: raised in the main thread, so cleanups run."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM (what `kill` and `timeout` send) both raise Interrupted while the block runs."""
    def stop(signum, _frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def reconstruct_main(args: argparse.Namespace) -> int:
    """`c123 reconstruct IMAGE --prompt TEXT ...`: one image to OUT/{result.json,mesh,video,views}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from c123.preprocess import prepare_input
    from c123.provenance import resolve_device
    from c123.reconstruct import check_prompt, load_priors, reconstruct

    cfg = resolved_config(args)
    out = Path(args.out or Path("outputs") / Path(args.image).stem)
    args.resume = f"rerun the same command to resume {out} from its last checkpoint"
    # a plain photo gets its cut-out, depth and caption here, each step announced (and cached)
    inp = prepare_input(args.image, mask=args.mask, depth=args.depth, prompt=args.prompt or "", cfg=cfg,
                        announce=lambda line: print(f"preprocess: {line}"))
    check_prompt(inp, cfg)  # bad input and missing weights fail before the progress display starts
    warn_input(inp)
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


def resolved_config(args: argparse.Namespace):
    """The preset with --seed (--variant, --concept where the command has them), then the --set overrides,
    validated."""
    from c123.config import apply_overrides, preset
    from c123.config_checks import validate

    cfg = preset(args.preset)
    cfg.seed = args.seed
    cfg.schedule.variant = getattr(args, "variant", cfg.schedule.variant)
    cfg.concept.enabled = getattr(args, "concept", cfg.concept.enabled)
    return validate(apply_overrides(cfg, args.set or []))


def preprocess_main(args: argparse.Namespace) -> int:
    """`c123 preprocess IMAGE [--out DIR]`: the cut-out, depth map and caption a reconstruction would
    estimate, written as files to inspect, fix and pass back to `c123 reconstruct`."""
    from c123.preprocess import missing_parts, read_input, write_preprocessed

    cfg = resolved_config(args)
    files = read_input(args.image, args.mask, args.depth)
    out = Path(args.out or Path("preprocessed") / Path(args.image).stem)
    parts = missing_parts(files, args.prompt or "", cfg.preprocess)
    record = write_preprocessed(files, args.prompt or "", parts, cfg, out, announce=print)
    for role, name in record.files.items():
        print(f"{role}: {out / name}")
    command = [f"c123 reconstruct {out / record.files['rgba']}"]
    if "depth" in record.files:
        command.append(f"--depth {out / record.files['depth']}")
    if "caption" in record.files:
        command.append(f'--prompt "$(cat {out / record.files["caption"]})"')
    print("reconstruct it with: " + " ".join(command))
    print("no normal map: the transformers DPT depth model gives none (the method does not use one)")
    return 0


def warn_input(inp) -> None:
    """Warnings about the input (e.g. a depth map that cannot be used), printed before the run starts."""
    for warning in getattr(inp, "warnings", []):
        print(f"warning: {warning}", file=sys.stderr)


def models_main(args: argparse.Namespace) -> int:
    """`c123 models tiny DIR`: tiny random-weight priors in the real on-disk formats."""
    from c123.priors.tiny import write_tiny_models

    for name, path in write_tiny_models(args.dir).items():
        print(f"{name}: {path}")
    return 0


def _input_arguments(cmd: argparse.ArgumentParser) -> None:
    """What `reconstruct` and `preprocess` both take: the given parts of the input and the config."""
    cmd.add_argument("--prompt", default="", help="text prompt (without it a caption model writes one)")
    cmd.add_argument("--mask", help="mask PNG for an RGB image (without it a background remover cuts the object out)")
    cmd.add_argument("--depth", help="depth PNG, larger = farther (without it a depth model estimates one)")
    cmd.add_argument("--preset", default="paper", help="paper | fast | tiny")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.nerf_iters=100")


def build_parser(add_commands: AddCommands | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="c123", description="Consistent123: one image to a consistent textured 3D asset")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="one image -> textured mesh, turntable video, orbit views")
    rec.add_argument("image", help="RGBA image, RGB with --mask, or a plain photo (cut out by a background remover)")
    _input_arguments(rec)
    rec.add_argument("--variant", default="consistent123",
                     help="consistent123 | 3d-only | dynamic-only | fixed-switch | 3d-then-2d")
    rec.add_argument("--concept", action="store_true", help="learn a token for the object (textual inversion) "
                     "and put it in Stable Diffusion's prompt (paper appendix A.2; cached per image)")
    rec.add_argument("--out", help="output folder (default outputs/<image name>)")
    rec.set_defaults(run=reconstruct_main)

    pre = sub.add_parser("preprocess", help="a photo -> cut-out RGBA, depth PNG and caption, to inspect and fix")
    pre.add_argument("image", help="a photo (or an RGBA image / RGB with --mask)")
    _input_arguments(pre)
    pre.add_argument("--out", help="output folder (default preprocessed/<image name>)")
    pre.set_defaults(run=preprocess_main)

    models = sub.add_parser("models", help="model utilities")
    models_sub = models.add_subparsers(dest="what", required=True)
    tiny = models_sub.add_parser("tiny", help="write tiny random-weight priors to DIR")
    tiny.add_argument("dir")
    tiny.set_defaults(run=models_main)

    if add_commands is not None:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None, add_commands: AddCommands | None = None) -> int:
    """Run one sub-command; a user error, an interrupt or a full disk ends in one line on stderr.

    Exit status: the command's (0 done), 2 a user error, 128 + the signal number when interrupted."""
    from c123.provenance import offline_defaults

    argv = list(sys.argv[1:] if argv is None else argv)
    offline_defaults()
    parser = build_parser(add_commands)
    args = argparse.Namespace(resume=None)
    try:
        args, rest = parser.parse_known_args(argv, args)
        args.rest = rest
        if rest and not getattr(args, "takes_rest", False):
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        with signals_interrupt():
            return int(args.run(args) or 0)
    except C123Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"interrupted by {signal.Signals(signum).name}: {args.resume or 'rerun the same command'}",
              file=sys.stderr)
        return 128 + signum
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"error: no space left on the device writing {err.filename or 'a file'}: free space and rerun "
              "the same command (finished work is kept)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
