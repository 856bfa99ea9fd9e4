"""`python -m portrait_core`: the command line over the same core the WebUI tabs and HTTP API use."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from portrait_core import __version__
from portrait_core.errors import PortraitError
from portrait_core.log import configure_logging, get_logger

log = get_logger("cli")

HOME_HELP = ("Portrait Studio home: its identities, LoRAs, jobs and results (default: PORTRAIT_HOME, else "
             "~/.portrait-studio)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m portrait_core", description=__doc__)
    parser.add_argument("--version", action="version", version=f"Portrait Studio {__version__}")
    parser.add_argument("--loglevel", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo_parser(sub)
    _add_preprocess_parser(sub)
    _add_train_parser(sub)
    _add_generate_parser(sub)
    _add_serve_parser(sub)
    _add_workflow_parser(sub)
    from portrait_core.adapters.cli.models import add_models_parser
    add_models_parser(sub)
    return parser


def _add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="run the pipeline on sample photos and a tiny local model")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the results")
    demo.add_argument("--base-model", type=Path, default=None,
                      help="a diffusers folder or .safetensors checkpoint; default: the tiny local model")
    demo.add_argument("--size", type=int, default=256, help="work size in pixels (multiple of 8)")
    demo.add_argument("--steps", type=int, default=30, help="training steps")
    demo.add_argument("--seed", type=int, default=1)


def _add_preprocess_parser(sub) -> None:
    pre = sub.add_parser("preprocess", help="check, score and crop a folder of photos into a dataset")
    pre.add_argument("photos_dir", type=Path, metavar="PHOTOS_DIR")
    pre.add_argument("--id", required=True, dest="identity", help="identity name: letters, digits, - and _")
    pre.add_argument("--root", type=Path, default=None, help=HOME_HELP)


def _add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train an identity's LoRA (runs preprocessing first with --photos)")
    train.add_argument("--id", required=True, dest="identity", help="identity name: letters, digits, - and _")
    train.add_argument("--root", type=Path, default=None, help=HOME_HELP)
    train.add_argument("--photos", type=Path, default=None, help="folder of photos to prepare first")
    train.add_argument("--base-model", default=None, help="checkpoint or diffusers folder; default: tiny local model")
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--resolution", type=int, default=None)
    train.add_argument("--validate-every", type=int, default=None)
    train.add_argument("--rank", type=int, default=None)
    train.add_argument("--alpha", type=float, default=None)
    train.add_argument("--sdxl", action="store_true", help="SDXL base (the tiny SDXL model when none is given)")


def _add_generate_parser(sub) -> None:
    gen = sub.add_parser("generate", help="render trained identities into template photos")
    gen.add_argument("--id", required=True, dest="identities",
                     help="identity, or several separated by commas (one per template face, left to right)")
    gen.add_argument("--root", type=Path, default=None, help=HOME_HELP)
    gen.add_argument("--template", type=Path, action="append", required=True, help="template photo (repeatable)")
    gen.add_argument("--out", type=Path, default=Path("portraits"), help="output folder")
    gen.add_argument("--seed", type=int, default=-1)
    gen.add_argument("--batch", type=int, default=1, help="seeds per template, ranked by identity score")
    gen.add_argument("--base-model", type=Path, default=None, help="checkpoint; default: the tiny local model")
    gen.add_argument("--prompt", default="", help="extra prompt words")
    gen.add_argument("--steps", type=int, default=None, help="first-pass steps (default 50)")
    gen.add_argument("--crop-size", type=int, default=None, help="short side of the work crop (default 512)")


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="run the standalone app: HTTP API under /sdapi/v1/portrait/ (and the UI)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=7861)
    serve.add_argument("--base-model", type=Path, default=None, help="checkpoint; default: the tiny local model")
    serve.add_argument("--api-auth", default=None,
                       help="user:pass[,user2:pass2], as the WebUI's --api-auth (visible in the process list: "
                            "prefer --api-auth-file or the PORTRAIT_API_AUTH variable)")
    serve.add_argument("--api-auth-file", type=Path, default=None,
                       help="file with one user:pass per line: the login of the API and the tabs")
    serve.add_argument("--root", type=Path, default=None, help=HOME_HELP)
    serve.add_argument("--checkpoints-dir", type=Path, default=None,
                       help="folder of further checkpoints clients may name as base_model (by file name)")


def _add_workflow_parser(sub) -> None:
    flow = sub.add_parser("workflow", help="run a workflow file (txt2img, pose transfer, image prompt, restore ...)")
    flow.add_argument("file", type=Path, metavar="FILE.json")
    flow.add_argument("--out", type=Path, default=Path("workflow-output"), help="folder for every step's images")
    flow.add_argument("--base-model", type=Path, default=None, help="checkpoint; default: the tiny local model")
    flow.add_argument("--root", type=Path, default=None, help=HOME_HELP)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.loglevel)
    from pydantic import ValidationError

    try:
        if args.command == "models":
            from portrait_core.adapters.cli.models import run_models_command
            return run_models_command(args)
        return _run(args)
    except (PortraitError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def workspace_of(args: argparse.Namespace):
    """The home `--root` names, else the configured one."""
    from portrait_core.services.workspace import Workspace

    return Workspace.at(args.root) if getattr(args, "root", None) else Workspace.from_settings()


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from portrait_core.adapters.cli.demo import run_demo
        return run_demo(out_dir=args.out, base_model=args.base_model, size=args.size,
                        steps=args.steps, seed=args.seed)
    if args.command == "preprocess":
        from portrait_core.prepare.preprocess import run_from_cli
        return run_from_cli(photos_dir=args.photos_dir, identity=args.identity,
                            root=workspace_of(args).identities)
    if args.command == "generate":
        from portrait_core.adapters.cli.generate import run_generate_command
        return run_generate_command(args)
    if args.command == "workflow":
        from portrait_core.adapters.cli.workflow import run_workflow_command
        return run_workflow_command(args)
    if args.command == "serve":
        from portrait_core.adapters.standalone import resolve_api_auth, serve
        api_auth = resolve_api_auth(args.api_auth, args.api_auth_file)
        return serve(host=args.host, port=args.port, base_model=args.base_model, api_auth=api_auth,
                     workspace=workspace_of(args), checkpoints_dir=args.checkpoints_dir)
    if args.command == "train":
        from portrait_core.adapters.cli.train import run_train_command
        return run_train_command(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
