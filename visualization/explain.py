"""The steps of ``visualization.ipynb`` and of its CLI twin ``python -m visualization.explain``.

Load the trained model and the test split, pick examples from every label bin (the rare
ones included), push each prediction down (poorer) and up (richer) with LOTS
(:mod:`visualization.lots`), and turn the perturbations into heatmaps, band/quarter
importance, Captum baselines and a deletion/insertion faithfulness table
(:mod:`visualization.heatmaps`, :mod:`visualization.baselines`). Figures and tables are
written under the run's ``explain`` folder.
"""

from __future__ import annotations

if __name__ == "__main__":  # parse first: --help and bad options answer before torch loads
    from visualization.explain_config import get_args_parser

    get_args_parser().parse_args()

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from extract_GPS_images.schema import DW_BAND
from metrics import bin_edges, bin_index
from utils.atomic import atomic_open
from utils.hdf5_schema import read_stats
from utils.ownership import OutputFolder
from utils.paths import RunPaths, resolve
from visualization import baselines as bl
from visualization import heatmaps as hm
from visualization.explain_config import (  # noqa: F401 (GROW re-exported)
    GROW,
    ExplainConfig,
    get_args_parser,
)
from visualization.lots import (
    LotsResult,
    data_range,
    frame_change,
    is_dw_channel,
    lots,
    push_target,
    valid_range,
)

#: Experiment of ``main.ipynb`` whose best checkpoint is explained by default.
BASELINE_EXPERIMENT = "l2_baseline"
#: Files only the explanations stage writes (an earlier version's folder is adopted).
EXPLAIN_MARKERS: tuple[str, ...] = ("config.json", "pushes.csv", "faithfulness.csv")
#: Below this share of converged pushes the stage warns (raise ``iterations``/``grow``).
MIN_CONVERGED = 0.9

#: Names of the two LOTS pushes, in plotting order.
PUSHES: tuple[str, ...] = ("poorer", "richer")


@dataclass
class Session:
    """What every step needs: the model, the datasets, the clamp ranges, the label bins."""

    cfg: ExplainConfig
    model: nn.Module
    model_config: Any
    dataset: Any  # utils.dataloader.ShardDataset, as the model sees it
    display: Any  # the same samples unnormalised, RGB + DW (for the figures)
    band_names: list[str]
    lower: torch.Tensor
    upper: torch.Tensor
    step_range: torch.Tensor
    mutable: torch.Tensor
    edges: np.ndarray
    checkpoint: Path


@dataclass
class Examples:
    """The samples explained: split indices, labels, bins, inputs and predictions."""

    index: np.ndarray
    label: np.ndarray
    bin: np.ndarray
    x: torch.Tensor
    prediction: np.ndarray
    bin_counts: dict[int, int] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "index": self.index,
                "label": self.label,
                "bin": self.bin,
                "prediction": self.prediction,
            }
        )


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def default_checkpoint(run_dir: str | Path) -> Path:
    """``train/<BASELINE_EXPERIMENT>/best.pt`` of the run, else its only ``best.pt``.

    Raises:
        FileNotFoundError: naming what was looked for and the notebook that writes it.
    """
    train = RunPaths.of(run_dir).train
    preferred = train / BASELINE_EXPERIMENT / "best.pt"
    if preferred.is_file():
        return preferred
    found = sorted(train.glob("**/best.pt"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"no checkpoint {preferred}"
        + (f" and several others ({[str(p) for p in found]}): pass checkpoint=" if found else "")
        + "; run main.ipynb first (it trains and saves best.pt)"
    )


def load_session(
    cfg: ExplainConfig, *, model: nn.Module | None = None, model_config: Any = None
) -> Session:
    """Load the checkpoint (or take ``model`` + ``model_config``), the split and the ranges.

    ``model_config`` needs ``channels``, ``dw_mode`` and ``crop`` (as the training config
    saved in the checkpoint has); the dataset is built with them so that the model sees
    exactly what it was trained on (centre crops, train statistics).
    """
    from utils.dataloader import ShardDataset, input_layout  # noqa: PLC0415

    OutputFolder.claim(cfg.paths.explain, "explanations", EXPLAIN_MARKERS)  # refuses foreign
    checkpoint = Path("<given model>")
    if model is None:
        from utils.checkpoint import load_model_from_checkpoint  # noqa: PLC0415

        checkpoint = resolve(cfg.checkpoint) if cfg.checkpoint else default_checkpoint(cfg.run_dir)
        model, model_config = load_model_from_checkpoint(checkpoint, map_location="cpu")
    model.eval()
    shards = resolve(cfg.shards_dir) if cfg.shards_dir else cfg.paths.shards
    channels = _get(model_config, "channels", "s2")
    dw_mode = _get(model_config, "dw_mode", "onehot")
    crop = _get(model_config, "crop", None)
    from utils.models import StackedVideo  # noqa: PLC0415

    layout = input_layout(str(_get(model_config, "model", "")))
    dataset = ShardDataset(
        shards, cfg.split, channels=channels, crop=crop, dw_mode=dw_mode, layout=layout
    )
    if dataset.frames:  # a video model: explained through its stacked view
        model = StackedVideo(model, len(dataset.frames)).eval()
    has_dw = DW_BAND in dataset.file_bands
    display = ShardDataset(
        shards,
        cfg.split,
        channels="rgb",
        crop=dataset.crop,
        dw_mode="channel" if has_dw else "none",
        normalize=False,
    )
    expected = _get(getattr(model, "spec", {}), "in_channels", dataset.num_channels)
    if int(expected) != dataset.num_channels:
        raise ValueError(
            f"the model takes {expected} channels, the dataset gives {dataset.num_channels} "
            f"({dataset.band_names}); check channels/dw_mode of the checkpoint's config"
        )
    stats = read_stats(shards)
    flat = dataset.flat_band_names  # the channels of the (stacked) input LOTS changes
    lower, upper = valid_range(flat, stats, normalized=True)
    step_range = data_range(flat, stats, normalized=True)
    mutable = torch.tensor([cfg.perturb_dw or not is_dw_channel(b) for b in flat])
    train_labels = ShardDataset(shards, "train", channels=channels, dw_mode=dw_mode).labels
    label_range = _get(model_config, "label_range", None)
    edges = bin_edges(  # the bins of training and evaluation (main.ipynb)
        cfg.n_bins or int(_get(model_config, "bins", 6)),
        tuple(label_range) if label_range else None,
        reference=train_labels,
        quantile=bool(_get(model_config, "quantile_bins", False)),
    )
    return Session(
        cfg,
        model,
        model_config,
        dataset,
        display,
        list(flat),
        lower,
        upper,
        step_range,
        mutable,
        edges,
        checkpoint,
    )


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    out = [model(x[s : s + batch_size]).reshape(-1) for s in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def pick_examples(session: Session) -> Examples:
    """Draw ``examples_per_bin`` samples of every label bin (seeded); report empty bins."""
    cfg = session.cfg
    labels = session.dataset.labels
    bins = bin_index(labels, session.edges)
    rng = np.random.default_rng(cfg.seed)
    picked, counts = [], {}
    for k in range(len(session.edges) - 1):
        members = np.flatnonzero(bins == k)
        counts[k] = int(members.size)
        if members.size:
            take = min(cfg.examples_per_bin, members.size)
            picked.extend(sorted(rng.choice(members, size=take, replace=False).tolist()))
    empty = [k for k, c in counts.items() if c == 0]
    if empty:
        print(f"label bins with no {cfg.split} sample (nothing to explain there): {empty}")
    index = np.array(picked, dtype=np.int64)
    x = torch.stack([session.dataset[int(i)]["image"] for i in index])
    x = x.flatten(1, 2) if x.ndim == 5 else x  # a video model's stacked view
    pred = _predict(session.model, x, cfg.batch_size)
    return Examples(index, labels[index], bins[index], x, pred, counts)


def push_examples(session: Session, examples: Examples) -> dict[str, LotsResult]:
    """LOTS push of every example down (``poorer``) and up (``richer``) by ``cfg.push``."""
    cfg = session.cfg
    out = {}
    for name, sign in zip(PUSHES, (-1.0, 1.0), strict=True):
        target = push_target(session.model, examples.x, sign * cfg.push, cfg.layer)
        out[name] = lots(
            session.model,
            examples.x,
            target,
            layer=cfg.layer,
            lower=session.lower,
            upper=session.upper,
            step=cfg.step,
            iterations=cfg.iterations,
            rtol=cfg.rtol,
            anneal=cfg.anneal,
            grow=cfg.grow,
            mutable=session.mutable,
            step_range=session.step_range,
            batch_size=cfg.batch_size,
        )
    for name, rate in convergence(out).items():
        if rate < MIN_CONVERGED:
            warnings.warn(
                f"LOTS {name}: only {rate:.0%} of the pushes reached the planned change "
                f"within {cfg.iterations} iterations; raise iterations or grow",
                stacklevel=2,
            )
    return out


def convergence(pushes: dict[str, LotsResult]) -> dict[str, float]:
    """Share of the samples whose push converged before the iteration cap, per push."""
    return {name: float(res.converged.float().mean()) for name, res in pushes.items()}


def push_table(
    examples: Examples, pushes: dict[str, LotsResult], out: str | Path | None = None
) -> pd.DataFrame:
    """Per example: label, prediction, and for each push the prediction reached,
    whether LOTS converged and how many steps it took (written to ``out`` as CSV)."""
    table = examples.table()
    for name, res in pushes.items():
        final = res.predictions[torch.arange(len(res.x_adv)), res.iterations]
        table[f"pred_{name}"] = final.numpy()
        table[f"converged_{name}"] = res.converged.numpy()
        table[f"steps_{name}"] = res.iterations.numpy()
    if out is not None:
        with atomic_open(out) as handle:
            table.to_csv(handle, index=False)
    return table


def lots_heatmaps(
    session: Session, examples: Examples, pushes: dict[str, LotsResult]
) -> dict[str, np.ndarray]:
    """``"LOTS poorer"``/``"LOTS richer"`` -> (N, H, W): perturbation in units of each
    band's step range, summed over bands, blurred and clipped."""
    cfg, scale = session.cfg, session.step_range.numpy()
    return {
        f"LOTS {name}": hm.perturbation_heatmap(
            examples.x,
            res.x_adv,
            scale=scale,
            sigma=cfg.sigma,
            clip_percentile=cfg.clip_percentile,
        )
        for name, res in pushes.items()
    }


def importance(
    session: Session, examples: Examples, pushes: dict[str, LotsResult]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Mean share of the perturbation per band and per quarter, for each push."""
    scale = session.step_range.numpy()
    per_band, per_quarter = {}, {}
    for name, res in pushes.items():
        imp = hm.channel_importance(examples.x, res.x_adv, scale=scale)
        b, q = hm.group_importance(imp, session.band_names)
        per_band[name] = {k: float(v.mean()) for k, v in b.items()}
        per_quarter[name] = {k: float(v.mean()) for k, v in q.items()}
    return per_band, per_quarter


def baseline_heatmaps(session: Session, examples: Examples) -> dict[str, np.ndarray]:
    """Captum heatmaps (``|attribution|`` summed over bands, smoothed like LOTS)."""
    cfg = session.cfg
    out = {}
    for method in cfg.methods:
        a = bl.attribute(
            session.model,
            examples.x,
            method,
            ig_steps=cfg.ig_steps,
            occlusion_window=cfg.occlusion_window,
            batch_size=cfg.batch_size,
        )
        out[method] = hm.attribution_heatmap(
            a, sigma=cfg.sigma, clip_percentile=cfg.clip_percentile
        )
    return out


def faithfulness(
    session: Session, examples: Examples, heatmaps: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Deletion/insertion AUCs of every heatmap method plus a random reference,
    written to ``explain/faithfulness.csv``."""
    cfg = session.cfg
    maps = dict(heatmaps)
    maps["random"] = bl.random_heatmaps(next(iter(heatmaps.values())).shape, cfg.seed)
    results = {
        name: bl.deletion_insertion(
            session.model, examples.x, m, steps=cfg.faithfulness_steps, batch_size=cfg.batch_size
        )
        for name, m in maps.items()
    }
    table = pd.DataFrame(bl.faithfulness_table(results)).set_index("method")
    out = cfg.paths.explain / "faithfulness.csv"
    with atomic_open(out) as handle:
        table.to_csv(handle)
    return table


def _display_images(session: Session, examples: Examples) -> tuple[list, list]:
    names = session.display.band_names
    rgb, dw = [], []
    for i in examples.index:
        image = session.display[int(i)]["image"].numpy()
        rgb.append(hm.true_colour(image, names, session.cfg.quarter))
        dw.append(hm.dw_map(image, names))
    return rgb, dw


def _row_titles(examples: Examples, table: pd.DataFrame | None = None) -> list[str]:
    titles = []
    for r, (i, y, b, p) in enumerate(
        zip(examples.index, examples.label, examples.bin, examples.prediction, strict=True)
    ):
        text = f"#{i} bin {b}\ny={y:.2f} pred={p:.2f}"
        if table is not None and "pred_poorer" in table:
            # a push that stopped at the iteration cap, short of the planned change: *
            cap = ["" if table[f"converged_{k}"].iloc[r] else "*" for k in PUSHES]
            text += (
                f"\n-> {table['pred_poorer'].iloc[r]:.2f}{cap[0]}"
                f" / {table['pred_richer'].iloc[r]:.2f}{cap[1]}"
            )
        titles.append(text)
    return titles


def save_figures(
    session: Session,
    examples: Examples,
    pushes: dict[str, LotsResult],
    heatmaps: dict[str, np.ndarray],
    baseline_maps: dict[str, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Write the PNGs under ``explain/``: the LOTS heatmap grid, band/quarter importance,
    the LOTS traces and (with ``baseline_maps``, even empty) LOTS beside the Captum
    baselines."""
    out = session.cfg.paths.explain
    rgb, dw = _display_images(session, examples)
    titles = _row_titles(examples, push_table(examples, pushes))
    rates = convergence(pushes)
    shown = {  # each LOTS column says how many of its pushes converged
        f"{key}\nconverged {rates[key.removeprefix('LOTS ')]:.0%}"
        if key.removeprefix("LOTS ") in rates
        else key: maps
        for key, maps in heatmaps.items()
    }
    figures = {
        "heatmaps": hm.plot_heatmap_grid(
            rgb,
            shown,
            out / "lots_heatmaps.png",
            dw=dw,
            row_titles=titles,
            difference=tuple(shown)[:2] if len(shown) == 2 else None,
        ),
        "importance": hm.plot_importance(
            *importance(session, examples, pushes), out / "band_quarter_importance.png"
        ),
        "traces": hm.plot_traces(
            {k: v.distances.numpy() for k, v in pushes.items()},
            {k: v.predictions.numpy() for k, v in pushes.items()},
            out / "lots_traces.png",
        ),
    }
    frames = session.dataset.frames
    if frames:  # which quarter LOTS changed
        scale, video = session.step_range.numpy(), (len(examples.x), -1, len(frames))
        per_quarter = {
            f"{name} {q}": hm.smooth(m[:, t], sigma=session.cfg.sigma)
            for name, res in pushes.items()
            for m in [
                frame_change(
                    examples.x.reshape(*video, *examples.x.shape[-2:]),
                    res.x_adv.reshape(*video, *examples.x.shape[-2:]),
                    scale,
                )
            ]
            for t, q in enumerate(frames)
        }
        figures["quarters"] = hm.plot_heatmap_grid(
            rgb, per_quarter, out / "lots_quarters.png", row_titles=titles
        )
    if baseline_maps is not None:
        both = {**shown, **baseline_maps}
        figures["baselines"] = hm.plot_heatmap_grid(
            rgb, both, out / "lots_vs_baselines.png", row_titles=titles
        )
    return figures


def explain_run(cfg: ExplainConfig, **session_kwargs: Any) -> dict[str, Any]:
    """The whole stage (what the notebook does cell by cell); returns the tables and the
    figure paths, and writes ``explain/config.json`` and ``explain/pushes.csv``."""
    import json  # noqa: PLC0415

    session = load_session(cfg, **session_kwargs)
    examples = pick_examples(session)
    pushes = push_examples(session, examples)
    table = push_table(examples, pushes, cfg.paths.explain / "pushes.csv")
    maps = lots_heatmaps(session, examples, pushes)
    base = baseline_heatmaps(session, examples)
    faith = faithfulness(session, examples, {**maps, **base})
    figures = save_figures(session, examples, pushes, maps, base)
    explain = cfg.paths.explain
    with atomic_open(explain / "config.json") as handle:
        json.dump({**asdict(cfg), "checkpoint_used": str(session.checkpoint)}, handle, indent=2)
    return {
        "pushes": table,
        "faithfulness": faith,
        "figures": figures,
        "convergence": convergence(pushes),
    }


# ------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> dict:
    """Entry point: run the whole explanation stage and print where the outputs went."""
    args = vars(get_args_parser().parse_args(argv))
    args.update({k: str(args[k]) for k in ("run_dir", "checkpoint", "shards_dir") if args[k]})
    cfg = ExplainConfig(**args)
    out = explain_run(cfg)
    print(out["pushes"].to_string(index=False))
    print(out["faithfulness"].to_string())
    for name, path in out["figures"].items():
        print(f"{name}: {path}")
    return out


if __name__ == "__main__":
    main()
