"""`cit`: thin sub-commands over the toolkit.

Each command lives in its own module, which defines ``add_parser(subparsers)``; the parser it
adds sets ``func`` to a callable taking the parsed args and returning the process exit code.
Modules are imported only when the command line is parsed, so `cit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command modules, in the order `cit --help` lists them
COMMAND_MODULES = [
    "toolkit.cli.datalist",  # cit datalist, cit synth
    "toolkit.cli.infer",  # cit infer
    "toolkit.cli.audit",  # cit audit
    "toolkit.cli.report",  # cit report
    "toolkit.cli.export",  # cit export
    "toolkit.cli.compare",  # cit compare
    "toolkit.cli.verify_bundle",  # cit verify-bundle
]


def build_parser() -> argparse.ArgumentParser:
    from toolkit import __version__

    parser = argparse.ArgumentParser(prog="cit", description="Clinical imaging toolkit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from toolkit.data.plugins import PluginError

    try:
        args = build_parser().parse_args(argv)
    except PluginError as err:  # a module CIT_PLUGINS names (docs/extending.md): one line, no traceback
        print(f"cit: error: {err}", file=sys.stderr)
        return 2
    # one logging set-up for every command (once the command line parsed, not while the parser is built):
    # INFO, except for a command whose parser sets ``quiet_log`` (`cit infer`: paths and UIDs may identify
    # patients, and libraries such as dicomweb-client log each request at INFO), unless --verbose
    quiet = getattr(args, "quiet_log", False) and not getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
