"""``python -m extract_GPS_images {synthetic,gee,grid} ...``: the CLI twin of image.ipynb
(``grid`` writes a places file of square cells to predict)."""

from __future__ import annotations

import argparse
import importlib

from utils.cli import HelpFormatter, make_parser

#: sub-command -> module providing ``add_arguments(parser)`` and ``main(args)``.
COMMANDS: dict[str, str] = {
    "synthetic": "extract_GPS_images.synthetic",
    "gee": "extract_GPS_images.gee",
    "grid": "extract_GPS_images.grid",
}


def get_args_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per backend."""
    parser = make_parser("extract_GPS_images", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        summary = mod.__doc__.splitlines()[0]
        mod.add_arguments(
            sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
        )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and run the chosen backend."""
    args = get_args_parser().parse_args(argv)
    importlib.import_module(COMMANDS[args.command]).main(args)


if __name__ == "__main__":
    main()
