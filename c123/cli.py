"""The method's commands: `reconstruct` (one image to a mesh), `preprocess` (a photo to the files `reconstruct`
reads, to inspect and fix), `config` (presets as YAML), `view` (a page to look at results) and `models tiny`
(tiny test models).

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

from c123 import storage
from c123.atomic import is_url, local_path
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


def resolve_args_config(args: argparse.Namespace, check_device: bool = True):
    """The checked config of a command's --preset, --config, --seed, --variant, --log and --set."""
    from c123.config_files import resolve_config

    log = getattr(args, "log", None)
    flags = [] if log is None else [f"log.tensorboard={'true' if log == 'tensorboard' else 'false'}"]
    if getattr(args, "concept", False):
        flags.append("concept.enabled=true")
    return resolve_config(args.preset, getattr(args, "variant", None), getattr(args, "seed", None),
                          flags + args.set + camera_flags(args), config_file=args.config, check_device=check_device)


def camera_flags(args: argparse.Namespace) -> list[str]:
    """The overrides of `reconstruct --elevation DEG` (camera.ref_polar = 90 - DEG) and `--azimuth DEG`
    (camera.ref_azimuth), applied after --config and --set; giving a field both ways is refused."""
    from c123.config import ELEVATION_ESTIMATE, elevation_value

    given = {}
    elevation = elevation_value(getattr(args, "elevation", None), "--elevation",
                                "pass the input view's elevation in degrees, e.g. --elevation 30, or 'estimate'")
    if elevation == ELEVATION_ESTIMATE:
        given["camera.estimate_elevation"] = ("--elevation estimate", True)
    elif elevation is not None:
        given["camera.ref_polar"] = ("--elevation", 90.0 - elevation)
        given["camera.estimate_elevation"] = ("--elevation", False)  # given: nothing to estimate
    azimuth = getattr(args, "azimuth", None)
    if azimuth is not None:
        given["camera.ref_azimuth"] = ("--azimuth", azimuth)
    for item in args.set:
        key = item.partition("=")[0].strip()
        if key in given:
            raise C123Error(f"{given[key][0]} and --set {item.strip()} both set {key}: give the input camera once "
                            f"({given[key][0]} is in degrees of elevation/azimuth)")
    return [f"{key}={str(value).lower() if isinstance(value, bool) else repr(value)}"
            for key, (_, value) in given.items()]


def degrees(text: str) -> float:
    """An argparse type: a finite number of degrees."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of degrees") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of degrees")
    return value


def take_positional(args: argparse.Namespace, name: str, required: bool) -> None:
    """`--set` takes KEY=VALUE items; a word without '=' among them is the positional `name` that argparse
    let `--set` swallow (`--set train.nerf_iters=10 IMAGE`)."""
    words = [item for item in args.set if "=" not in item]
    args.set = [item for item in args.set if "=" in item]
    if getattr(args, name) is None and words:
        setattr(args, name, words.pop(0))
    if words:
        raise C123Error(f"override '{words[0]}' is not KEY=VALUE: write e.g. --set train.nerf_iters=100")
    if required and getattr(args, name) is None:
        raise C123Error(f"c123 {args.command}: the {name} is missing (see c123 {args.command} --help)")


def reconstruct_main(args: argparse.Namespace) -> int:
    """`c123 reconstruct IMAGE --prompt TEXT ...`: one image to OUT/{result.json,config.yaml,mesh,video,views,tb}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from c123 import __version__
    from c123.outputs import case_name, check_output_folder, new_run_dir
    from c123.preprocess import prepare_input
    from c123.provenance import resolve_device
    from c123.priors.loading import load_priors
    from c123.progress import Event, Notice, Resumed
    from c123.reconstruct import check_prompt, reconstruct

    take_positional(args, "image", required=True)
    cfg = resolve_args_config(args)
    remote = remote_out(args.out)  # a URL --out: scheme, store and bucket checked before any compute
    case = case_name(args.image)
    check_output_folder(args.out or Path("outputs") / case)  # before any model runs
    # a plain photo gets its cut-out, depth and caption here, each step announced (and cached)
    inp = prepare_input(args.image, mask=args.mask, depth=args.depth, prompt=args.prompt or "", cfg=cfg,
                        case_id=case, announce=lambda line: print(f"preprocess: {line}"))
    check_prompt(inp, cfg)  # bad input and missing weights fail before the progress display starts
    warn_input(inp)
    where = args.out or f"outputs/{case}/<new stamp>"
    print(f"c123 {__version__}: {case}, preset {cfg.preset}, variant {cfg.schedule.variant}, seed {cfg.seed}, "
          f"{camera_line(cfg)}, config {cfg.hash()} -> {where}", flush=True)
    priors = load_priors(cfg, resolve_device(cfg.train.device))
    if remote:
        out = storage.scratch_folder(remote)
    else:
        out = local_folder(args.out, "--out") if args.out else new_run_dir(Path("outputs") / case)
    args.resume = (f"rerun the same command to resume {remote or out} from its last checkpoint" if args.out else
                   f"rerun the same command with --out {out} to resume it from its last checkpoint")
    if remote:
        print(f"computing in {out} (checkpoints stay there), then uploading to {remote}", flush=True)

    columns = [TextColumn("{task.fields[stage]:>6}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("w3D {task.fields[w3d]:.3f} w2D {task.fields[w2d]:.3f} S {task.fields[s]} "
                          "switch {task.fields[switch]}"),
               TimeElapsedColumn()]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("reconstruct", total=cfg.train.nerf_iters + cfg.train.dmtet_iters,
                            stage="load", w3d=1.0, w2d=0.0, s="-", switch="-")

        def progress(event: Event) -> None:
            if isinstance(event, Notice):
                bar.console.print(f"notice: {event.message}")
                return
            if isinstance(event, Resumed):
                bar.update(task, completed=event.step, stage=event.label)
                bar.console.print(f"resumed from step {event.step}")
                return
            w3d, w2d = (1.0 if event.w3d is None else event.w3d), (0.0 if event.w2d is None else event.w2d)
            bar.update(task, completed=event.step, stage=event.label, w3d=w3d, w2d=w2d,
                       s="-" if event.S is None else f"{event.S:.4f}",
                       switch="-" if event.switch is None else event.switch)

        result = reconstruct(inp, cfg, out, priors=priors, progress=progress)
    if remote:
        upload_out(out, remote)
    shown = remote or out
    parts = ("result.json", "config.yaml", "mesh", "video", "views") + (
        ("prior_views",) if "prior_views" in result["outputs"] else ())
    wrote = ", ".join(str(storage.join(shown, part)) for part in parts)
    print(f"switch iteration: {result['switch_iteration']}; wrote {wrote}")
    if "events" in result["outputs"]:
        print(f"loss curves: tensorboard --logdir {out / result['outputs']['events']}")
    print(f"look at it: c123 view {out}" + (" (the local copy)" if remote else ""))
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    return 0


def camera_line(cfg) -> str:
    """'input camera elevation 30, azimuth 0': the reference camera the run assumes (90 - camera.ref_polar), or
    'elevation estimated from the image' (camera.estimate_elevation: the run prints and records the estimate)."""
    elevation = "estimated from the image" if cfg.camera.estimate_elevation else f"{90.0 - cfg.camera.ref_polar:g}"
    return f"input camera elevation {elevation}, azimuth {cfg.camera.ref_azimuth:g}"


def remote_out(out: str | None) -> str | None:
    """`reconstruct --out` as a checked URL (known scheme, not memory://, store answering, bucket there: else one
    StorageError line), or None for a local folder. The run is computed locally and uploaded (upload_out)."""
    if out is None or not is_url(out):
        return None
    remote = storage.output_location(out)
    storage.check_reachable(remote)
    return remote


def local_folder(path: str, what: str) -> Path:
    """A folder argument that must be on this machine (file:// or a plain path); a URL is one line (only
    `reconstruct --out` and `evaluate --out` write to object storage), never a local folder named 's3:'."""
    if is_url(path):
        raise C123Error(f"{what} {path}: this command reads and writes local folders only: pass a local path "
                        "(c123 reconstruct --out and c123 evaluate --out take URLs such as s3://bucket/prefix)")
    return local_path(path)


def upload_out(local: Path, remote: str) -> None:
    """The finished run folder to `remote`, result.json last (a reader that sees it sees every other file);
    the checkpoints stay local. A store's error is one line naming the URL."""
    try:
        storage.upload_folder(local, remote, last=("result.json",))
    except storage.StorageError:
        raise
    except Exception as err:  # noqa: BLE001 - turned into the one line
        raise storage.describe(err, remote) from None


def preprocess_main(args: argparse.Namespace) -> int:
    """`c123 preprocess IMAGE [--out DIR]`: the cut-out, depth map and caption a reconstruction would
    estimate, written as files to inspect, fix and pass back to `c123 reconstruct`."""
    from c123.outputs import case_name, check_output_folder
    from c123.preprocess import RECORD, cached_preprocessing, check_prompt_length, missing_parts, read_input

    take_positional(args, "image", required=True)
    cfg = resolve_args_config(args)
    out = local_folder(args.out, "--out") if args.out else Path("preprocessed") / case_name(args.image)
    check_output_folder(out)
    check_prompt_length(args.prompt or "", case_name(args.image))
    files = read_input(args.image, args.mask, args.depth)
    parts = missing_parts(files, args.prompt or "", cfg.preprocess)
    # the same cache as `c123 reconstruct`: what one computed, the other reuses (and the user sees those files)
    inp = cached_preprocessing(files, args.mask, args.depth, args.prompt or "", parts, cfg, announce=print)
    record = inp.preprocessing
    copy_files(Path(record.folder), out, [*record.files.values(), RECORD])
    for warning in inp.warnings:
        print(f"warning: {warning}", file=sys.stderr)
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


def copy_files(src: Path, dest: Path, names: list[str]) -> None:
    """Copy the files `names` of `src` into `dest` (created), each written whole or not at all."""
    import shutil

    from c123.atomic import atomic_path

    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(src / name, tmp)


def warn_input(inp) -> None:
    """Warnings about the input (e.g. a depth map that cannot be used), printed before the run starts."""
    for warning in getattr(inp, "warnings", []):
        print(f"warning: {warning}", file=sys.stderr)


def models_main(args: argparse.Namespace) -> int:
    """`c123 models tiny DIR`: tiny random-weight priors in the real on-disk formats."""
    from c123.outputs import check_output_folder
    from c123.priors.tiny import write_tiny_models

    folder = local_folder(args.dir, "DIR")
    check_output_folder(folder, "c123 models tiny")
    for name, path in write_tiny_models(folder).items():
        print(f"{name}: {path}")
    return 0


def config_main(args: argparse.Namespace) -> int:
    """`c123 config list` and `c123 config show [PRESET] [--config FILE] [--set KEY=VALUE ...]`."""
    from c123.config import PRESETS
    from c123.config_files import header_lines, to_yaml

    if args.what == "list":
        for name, make in PRESETS.items():
            doc = (make.__doc__ or "").strip().splitlines()[0]
            print(f"{name:<6} config {make().hash()}  {doc}")
        return 0
    take_positional(args, "preset", required=False)
    cfg = resolve_args_config(args, check_device=False)
    print(to_yaml(cfg, header_lines(cfg)), end="")
    return 0


def view_main(args: argparse.Namespace) -> int:
    """`c123 view RUN_OR_CASE_DIR [--out DIR] [--serve]`: a static page to look at results."""
    from c123.viewer import build_view, serve

    folder, page_dir = local_folder(args.dir, "RUN_OR_CASE_DIR"), args.out and local_folder(args.out, "--out")
    page = build_view(folder, page_dir, embed=not args.serve)  # from disk, the page carries the GLBs itself
    print(f"viewer: {page}")
    if args.serve:
        serve(page, folder, args.port)
    return 0


def add_config_arguments(p: argparse.ArgumentParser, preset_flag: bool = True) -> None:
    """--preset (or a positional PRESET), --config, --set: how every command that resolves a config takes it."""
    preset_help = "paper | fast | tiny (default: the config file's preset, else paper)"
    if preset_flag:
        p.add_argument("--preset", help=preset_help)
    else:
        p.add_argument("preset", nargs="?", help=preset_help)
    p.add_argument("--config", metavar="FILE.yaml",
                   help="config file with any subset of the fields below (e.g. from `c123 config show paper`)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="field overrides on top of the preset and the file, e.g. train.nerf_iters=100 (the fields "
                        "are listed below)")


def add_input_arguments(cmd: argparse.ArgumentParser) -> None:
    """What `reconstruct` and `preprocess` both take: the image, the parts of the input given, the seed."""
    cmd.add_argument("image", nargs="?",
                     help="RGBA image, RGB with --mask, or a plain photo (cut out by a background remover)")
    cmd.add_argument("--prompt", default="", help="text prompt (without it a caption model writes one)")
    cmd.add_argument("--mask", help="mask PNG for an RGB image (without it a background remover cuts the object out)")
    cmd.add_argument("--depth", help="depth PNG, larger = farther (without it a depth model estimates one)")
    cmd.add_argument("--seed", type=int, help="global seed (default: the config's, 0)")


def build_parser(add_commands: AddCommands | None = None) -> argparse.ArgumentParser:
    from c123.config_files import fields_help
    from c123.provenance import code_version
    from c123.schedules import SHAPES, VARIANTS

    parser = OneLineParser(prog="c123", description="Consistent123: one image to a consistent textured 3D asset")
    parser.add_argument("--version", action="version", version=f"c123 {code_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    fields = "config fields (--set KEY=VALUE, or in a --config file as section: / field: value):\n" + fields_help()

    rec = sub.add_parser("reconstruct", help="one image -> textured mesh, turntable video, orbit views",
                         epilog=fields, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(rec)
    rec.add_argument("--variant", help=f"{' | '.join(VARIANTS)}, optionally :SHAPE of the dynamic prior "
                                       f"({' | '.join(SHAPES)}) (default: the config's, consistent123:exp)")
    rec.add_argument("--elevation", metavar="DEG|estimate",
                     help="elevation of the input view in degrees, strictly between -90 and 90 (camera.ref_polar = "
                          "90 - DEG), or 'estimate' (from the image, with the 3D prior's views: "
                          "camera.estimate_elevation); default: the preset's, 0 in paper as the official code "
                          "assumes, the estimate in fast; positive looks down on the object")
    rec.add_argument("--azimuth", type=degrees, metavar="DEG",
                     help="azimuth of the input view around the object in degrees when it is not a front view "
                          "(camera.ref_azimuth; default 0: the input shows the object's front; positive: the "
                          "camera moved to its own right, i.e. counter-clockwise seen from above)")
    rec.add_argument("--concept", action="store_true", help="learn a token for the object (textual inversion) "
                     "and put it in Stable Diffusion's prompt (paper appendix A.2; cached per image)")
    rec.add_argument("--out", help="output folder, used as given (resumes a run there); default: a new "
                                   "outputs/<case>/<YYYYmmdd-HHMMSS>/")
    rec.add_argument("--log", choices=("tensorboard", "none"),
                     help="TensorBoard events in OUT/tb (default: the config's log.tensorboard, on)")
    add_config_arguments(rec)
    rec.set_defaults(run=reconstruct_main)

    pre = sub.add_parser("preprocess", help="a photo -> cut-out RGBA, depth PNG and caption, to inspect and fix",
                         epilog=fields, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(pre)
    pre.add_argument("--out", help="output folder (default preprocessed/<case>)")
    add_config_arguments(pre)
    pre.set_defaults(run=preprocess_main)

    config = sub.add_parser("config", help="list the presets, show a resolved config as YAML")
    config_sub = config.add_subparsers(dest="what", required=True)
    config_sub.add_parser("list", help="the presets and their config hashes").set_defaults(run=config_main)
    show = config_sub.add_parser("show", help="a preset (+ file, + overrides) as commented YAML",
                                 epilog=fields, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(show, preset_flag=False)
    show.set_defaults(run=config_main)

    view = sub.add_parser("view", help="a page with the turntable, views, curves and a 3D viewer of a result")
    view.add_argument("dir", metavar="RUN_OR_CASE_DIR", help="a reconstruction folder or a folder of them")
    view.add_argument("--out", metavar="DIR", help="where the page goes (default RUN_OR_CASE_DIR/view)")
    view.add_argument("--serve", action="store_true", help="also serve it on http://127.0.0.1:PORT until Ctrl-C")
    view.add_argument("--port", type=count(0), default=8123, help="port of --serve (default 8123; 0: any free one)")
    view.set_defaults(run=view_main)

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
