"""`facecomp` command line: one module per subcommand, each with ``add_command`` (its flags) and the function
that runs it."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from facecomp import __version__
from facecomp.cli import cluster as cluster_cli
from facecomp.cli import complete as complete_cli
from facecomp.cli import demo as demo_cli
from facecomp.cli import eval as eval_cli
from facecomp.cli import export as export_cli
from facecomp.cli import identity as identity_cli
from facecomp.cli import parsing as parsing_cli
from facecomp.cli import serve as serve_cli
from facecomp.cli import train as train_cli
from facecomp.cli import weights as weights_cli
from facecomp.runtime import MissingCapability, MissingExtra

SUBCOMMANDS = (train_cli, complete_cli, eval_cli, parsing_cli, identity_cli, demo_cli, serve_cli, cluster_cli,
               export_cli, weights_cli)


def build_command_line() -> argparse.ArgumentParser:
    command_line = argparse.ArgumentParser(prog="facecomp",
                                           description="Generative face completion (Li et al., CVPR 2017)")
    command_line.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    command_line.add_argument("--version", action="version", version=f"facecomp {__version__}")
    sub = command_line.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_command(sub)
    return command_line


def main(argv: list[str] | None = None) -> int:
    args = build_command_line().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # user errors: one line, no traceback
        print(f"facecomp: error: {e}", file=sys.stderr)
        return 2
    except (MissingExtra, MissingCapability) as e:  # an optional extra or a GPU is missing: say which
        print(f"facecomp: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `facecomp ... | head`: the reader has what it wanted; no error line
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit's flush
        return 0
    except OSError as e:  # an output folder that cannot be written, a full disk: the system's own words suffice
        print(f"facecomp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facecomp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
