"""What every command line of the project shares: ``python -m ...`` program names,
defaults shown in ``--help``, paths typed at a shell taken from the shell's folder, and an
output folder that cannot be written refused with a sentence.

Paths: a path typed at a shell (``--out relw``) is relative to the shell's current folder,
in every CLI (:func:`shell_path` makes it absolute when the arguments are parsed). Notebooks
start in different folders (Jupyter starts a kernel in the notebook's own folder), so their
``run_dir`` and other paths keep resolving from the project root (:func:`utils.paths.resolve`).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default as ``(default: X)``, also for options without help
    text; keeps the description's line breaks. None and False defaults are not shown."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    return (
        bool(action.option_strings)
        and action.nargs != 0
        and not (default is None or default is argparse.SUPPRESS or default == [])
    )


def make_parser(module: str, description: str | None, **kwargs) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` named ``python -m <module>`` that shows defaults."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=description,
        formatter_class=HelpFormatter,
        **kwargs,
    )


def shell_path(text: str) -> Path:
    """argparse ``type``: a path typed at a shell, made absolute from the shell's folder."""
    return Path(text).expanduser().absolute()


def add_run_dir(
    parser: argparse.ArgumentParser, default: str | None = "runs/demo", what: str = ""
) -> None:
    """The ``--run-dir`` option every stage accepts (a shell path)."""
    parser.add_argument(
        "--run-dir",
        type=shell_path,
        default=default,
        help=f"run folder{': ' + what if what else ''}",
    )


def writable_folder(path: str | Path, option: str) -> Path:
    """Create ``path`` if needed and check that a file can be written there.

    Raises:
        SystemExit: one sentence naming the folder, the reason and ``option``.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SystemExit(
            f"error: cannot write to {folder} ({reason}): give {option} a folder you can write to"
        ) from None
    return folder


def field_help(cls: type) -> dict[str, str]:
    """Field name -> its description in the ``Attributes:`` section of ``cls``'s
    Google-style docstring (``a, b: text`` describes both), so a config dataclass's
    docstring is also its CLI's help."""
    import inspect  # noqa: PLC0415
    import re  # noqa: PLC0415

    doc = inspect.getdoc(cls) or ""
    _, _, section = doc.partition("Attributes:\n")
    entries: dict[str, str] = {}
    names: list[str] = []
    for line in section.splitlines():
        match = re.match(r"^    (\w[\w, ]*):\s*(.*)$", line)
        if match:
            names = [n.strip() for n in match.group(1).split(",")]
            entries.update({n: match.group(2) for n in names})
        elif line.startswith("      ") and names:
            entries.update({n: f"{entries[n]} {line.strip()}" for n in names})
        elif line and not line.startswith(" "):
            break  # the next section

    def plain(text: str) -> str:  # reST roles and literals read as plain text in --help
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
        return text.replace("``", "").replace("%", "%%")

    return {name: plain(text) for name, text in entries.items()}
