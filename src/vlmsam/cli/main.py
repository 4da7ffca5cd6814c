"""``vlmsam``: one entry point, one sub-command per job.

User errors (a missing file, a corrupt image, a wrong checkpoint, bad prompts) print one line
that names the problem and exit with code 2; argparse's usage errors do the same, and so does an
``OSError`` the user fixes (no space left, a read-only or forbidden directory, a disk quota or
file-size limit). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vlmsam.errors import VlmsamError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    from vlmsam.cli import data, evaluate, merge_lora, proposals, sam, segment, serve, train

    parser = Parser(
        prog="vlmsam",
        description="Reasoning segmentation: a vision-language model reasons, Segment Anything draws the masks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and debug logs")
    parser.add_argument("--version", action="version", version=f"vlmsam {__import__('vlmsam').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in (sam, merge_lora, data, proposals, train, evaluate, segment, serve):  # one module per command (or pair)
        command.register(sub)
    return parser


def quiet_libraries(verbose: bool) -> None:
    """Quiet transformers and the hub through the environment: importing transformers here would cost
    seconds before a command could report a bad argument."""
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight-loading bars follow it
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (the usage block is ``--help``'s), and a hint where a
    negative coordinate was read as an option."""

    def error(self, message: str):
        if "expected one argument" in message and any(f in message for f in ("--box", "--point")):
            message += " (for a negative number write it with '=', e.g. --box=-50,10,200,240)"
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    return run_command(args, "vlmsam")


def run_command(args: argparse.Namespace, prog: str) -> int:
    """``args.run(args)`` with a user's error as one line (``<prog> <command>: error: ...``) and exit 2;
    also the entry point of the workshop commands in tools/."""
    try:
        return int(args.run(args) or 0)
    except VlmsamError as e:
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # a full disk, a read-only or forbidden place, a file-size limit: the user's to fix
        from vlmsam.io.result_set import USER_ERRNOS, os_error_text

        if e.errno not in USER_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prog} {args.command}: error: {where}{os_error_text(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
