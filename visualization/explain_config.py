"""The knobs of the explanation stage (:class:`ExplainConfig`) and the options of
``python -m visualization.explain``, in a module without torch: ``--help`` answers before
torch loads.

:mod:`visualization.explain` re-exports the config; the stage itself lives there.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from utils.paths import RunPaths

#: Captum methods offered by :mod:`visualization.baselines`.
METHODS: tuple[str, ...] = ("saliency", "integrated_gradients", "occlusion")
#: Default LOTS step growth (``ExplainConfig.grow``): at the demo's settings all 24 pushes
#: converge, in 18-19 iterations on average (4 of 24 within the 100 with the fixed step).
GROW = 1.2


@dataclass
class ExplainConfig:
    """Every knob of the explanation stage (visualization.ipynb sets the common ones in its
    ``parameters`` cell, any other through its ``options`` dict).

    Attributes:
        run_dir: the run folder (``RunPaths``); figures go to its ``explain`` folder.
        checkpoint: checkpoint file; None = ``train/<BASELINE_EXPERIMENT>/best.pt`` (or the
            only ``best.pt`` under ``train``).
        shards_dir: HDF5 shards; None = the run's ``shards`` folder.
        split: split whose samples are explained.
        examples_per_bin: examples drawn from each label bin (fewer where a bin is small).
        n_bins: number of label bins; None = the checkpoint's (``bins``, 6 by default),
            over its ``label_range`` or the training labels' range.
        iterations: LOTS iteration cap.
        step: LOTS step as a fraction of each band's typical (1-99 %) data range.
        layer: LOTS layer for the pushes: ``"output"`` (the prediction itself; the
            default, as a push through ``"features"`` targets the nearest feature vector
            with the wanted head output, which a trained ResNet often cannot reach: on the
            demo it stalls at a third of the push) or ``"features"``.
        push: how far each prediction is pushed down and up, in label units.
        rtol: LOTS stop: within this share of the starting distance / planned change.
        anneal: a sample's step shrinks by this factor each time it overshoots.
        grow: a sample's step grows by this factor after each step that brought it
            closer (up to 16 x ``step``; 1: the fixed step of the original LOTS, which
            leaves most demo pushes at the cap short of ``push``).
        quarter: quarter whose B4/B3/B2 make the true-colour image.
        sigma: Gaussian blur of the heatmaps, in pixels.
        clip_percentile: heatmaps are clipped at this per-map percentile.
        perturb_dw: let LOTS change the Dynamic World channels (off: they are categorical).
        methods: Captum baselines to compare (empty: none).
        ig_steps: integration steps of integrated gradients.
        occlusion_window: occluding square side in pixels.
        faithfulness_steps: steps of the deletion/insertion curves.
        batch_size: samples per LOTS / attribution batch.
        seed: seed of the example draw and the random reference map.
    """

    run_dir: str = "runs/demo"
    checkpoint: str | None = None
    shards_dir: str | None = None
    split: str = "test"
    examples_per_bin: int = 2
    n_bins: int | None = None
    iterations: int = 100
    step: float = 1 / 255
    layer: str = "output"
    push: float = 0.5
    rtol: float = 0.01
    anneal: float = 0.5
    grow: float = GROW
    quarter: str = "q2"
    sigma: float = 1.0
    clip_percentile: float | None = 99.0
    perturb_dw: bool = False
    methods: tuple[str, ...] = METHODS
    ig_steps: int = 16
    occlusion_window: int = 8
    faithfulness_steps: int = 16
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
        if self.examples_per_bin < 1 or (self.n_bins or 1) < 1 or self.push <= 0:
            raise ValueError(
                "need examples_per_bin >= 1, n_bins >= 1 and push > 0; got "
                f"{self.examples_per_bin}, {self.n_bins}, {self.push}"
            )

    @property
    def paths(self) -> RunPaths:
        return RunPaths.of(self.run_dir)


# ------------------------------------------------------------------------------ CLI
#: ExplainConfig fields that may be None, and their type on the command line.
OPTIONAL_NUMBERS: dict[str, type] = {"clip_percentile": float, "n_bins": int}


def get_args_parser() -> argparse.ArgumentParser:
    """Options of ``python -m visualization.explain`` (the fields of ``ExplainConfig``)."""
    from utils.cli import field_help, make_parser, shell_path  # noqa: PLC0415

    defaults, helps = ExplainConfig(), field_help(ExplainConfig)
    parser = make_parser(
        "visualization.explain",
        "LOTS heatmaps, band/quarter importance, Captum baselines and faithfulness for a "
        "trained checkpoint (writes PNGs/CSVs to <run_dir>/explain; the CLI twin of "
        "visualization.ipynb).",
    )
    for f in fields(ExplainConfig):
        flag, text = "--" + f.name.replace("_", "-"), helps.get(f.name)
        default = getattr(defaults, f.name)
        if f.name == "methods":
            parser.add_argument(flag, nargs="*", default=list(default), help=text)
        elif isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=text)
        elif f.name in ("run_dir", "checkpoint", "shards_dir"):  # typed at a shell
            parser.add_argument(flag, type=shell_path, default=default, help=text)
        elif default is None or f.name in OPTIONAL_NUMBERS:
            kind = OPTIONAL_NUMBERS.get(f.name, str)
            parser.add_argument(flag, type=kind, default=default, help=text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=text)
    return parser
