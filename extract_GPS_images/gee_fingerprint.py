"""The recipe fingerprint of an Earth Engine extraction folder (resume that knows its recipe).

Every setting that decides what the files hold (all of :class:`RecipeConfig`, the mode,
and for exports the layout, places per task, tile scale and destination) is written
to ``gee_recipe.json`` beside the manifest, and its short hash to every manifest row.
A re-run into the same folder with other settings is refused, naming what differs, as
the synthetic world refuses to mix two worlds in one folder; the same settings resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from utils.atomic import atomic_open

RECIPE_FILE = "gee_recipe.json"


class RecipeMismatch(ValueError):
    """The folder holds an extraction made with other settings."""


def recipe_settings(recipe: Any, mode: str, export: Any | None = None) -> dict[str, Any]:
    """The settings that decide the outputs: the recipe, the mode, export settings."""
    settings: dict[str, Any] = {"mode": mode, "recipe": dataclasses.asdict(recipe)}
    if export is not None:
        keep = (
            "layout",
            "points_per_task",
            "tile_scale",
            "destination",
            "folder",
            "bucket",
            "prefix",
            "max_pixels",
        )
        settings["export"] = {k: getattr(export, k) for k in keep}
    return json.loads(json.dumps(settings, default=list))  # tuples as lists, as stored


def fingerprint(settings: dict[str, Any]) -> str:
    """Short stable hash of ``settings`` (16 hex digits)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{path}{key}.")
        return out
    return [] if old == new else [f"{path.rstrip('.')}: {old!r} -> {new!r}"]


def check_recipe(folder: str | Path, settings: dict[str, Any], *, has_work: bool) -> str:
    """Record the settings in ``folder``, or refuse them if the folder holds others.

    Args:
        folder: the extraction folder (beside the manifest).
        settings: :func:`recipe_settings` of this run.
        has_work: whether the folder's manifest already lists finished or started work
            (such a folder without a recipe file was made before recipes were recorded).

    Returns:
        The fingerprint.

    Raises:
        RecipeMismatch: other settings are recorded (the message lists them), or there
            is work without a recorded recipe.
    """
    path = Path(folder) / RECIPE_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = _differences(old, settings)
        if changed:
            raise RecipeMismatch(
                f"{Path(folder)} holds an extraction made with other settings ({path}): "
                f"{'; '.join(changed)}. Use a new folder (--out), or the old settings"
            )
        return fingerprint(settings)
    if has_work:
        raise RecipeMismatch(
            f"{Path(folder)} holds extraction work without a recorded recipe ({RECIPE_FILE}); "
            "its settings are unknown, so it is not resumed: use a new folder (--out)"
        )
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=1, sort_keys=True)
    return fingerprint(settings)
