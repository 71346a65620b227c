"""The balanced-regression study from the command line, at any size, on CPU or GPU.

The twin of main.ipynb's study cells: the same :func:`utils.study.study.study` call. When
the run folder has no shards yet it first runs the image and split_and_batch stages of
the pipeline on the synthetic world at ``--n`` places of ``--size`` px.

    python -m utils.study.run --run-dir runs/study5k --n 5000 --size 64 --epochs 12
    python -m utils.study.run --run-dir runs/demo --experiments L2 BMC "weighted L2 a=0.5"
    python -m utils.study.run --run-dir runs/study5k --split-seeds 42 1 2 3 4   # 5 test sets
    python -m utils.study.run --run-dir runs/demo --models tiny_cnn resnet18 swin3d_t mosaiks \
        --experiments L2 "weighted L2 a=1"                                  # models x methods

Prints the results table (Markdown); files land in ``<run-dir>/train/study/``.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from utils.study.defaults import DEFAULT_ALPHAS, DEFAULT_CALIBRATE

if TYPE_CHECKING:  # torch-heavy: imported once the options are parsed (--help stays quick)
    from utils.study.study import StudyConfig


def get_args_parser() -> argparse.ArgumentParser:
    """Options of ``python -m utils.study.run``."""
    from utils.cli import add_run_dir, make_parser  # noqa: PLC0415

    p = make_parser("utils.study.run", __doc__.splitlines()[0])
    add_run_dir(p, "runs/study", "shards from <run-dir>/shards, results in <run-dir>/train")
    p.add_argument("--n", type=int, default=5000, help="synthetic places (only if no shards)")
    p.add_argument("--size", type=int, default=64, help="patch px (only if no shards)")
    p.add_argument("--experiments", nargs="+", default=None, help="names; default all")
    p.add_argument("--alphas", nargs="+", type=float, default=list(DEFAULT_ALPHAS))
    p.add_argument("--model", default="tiny_cnn")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="several models crossed with the experiments (e.g. tiny_cnn resnet18 swin3d_t "
        "mosaiks); overrides --model",
    )
    p.add_argument(
        "--mosaiks-filters",
        type=int,
        default=None,
        help="MOSAIKS random patches K (2K features; default: MosaiksConfig's 4096)",
    )
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--crop", type=float, default=None, help="crop share of the patch (None: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="several seeds: means and spread"
    )
    p.add_argument(
        "--calibration-alphas",
        nargs="*",
        type=float,
        default=list(DEFAULT_ALPHAS),
        help="balanced calibration after training, one row per a (none: no rows)",
    )
    p.add_argument(
        "--calibrate",
        nargs="+",
        default=list(DEFAULT_CALIBRATE),
        help="experiments whose predictions get the calibration rows",
    )
    p.add_argument(
        "--split-seeds",
        nargs="+",
        type=int,
        default=None,
        help="re-split the places with each seed and run the study on every split "
        "(utils.study.repeated_splits; the run's own split seed reuses its shards)",
    )
    p.add_argument(
        "--select-mae-within",
        type=float,
        default=None,
        help="keep the lowest val b-MAE among epochs within this share of the best val MAE "
        "(e.g. 0.1; default: lowest val b-MAE)",
    )
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--out-name", default="study", help="folder under <run-dir>/train")
    p.add_argument("--force", action="store_true", help="re-run cached experiments")
    p.add_argument(
        "--cache",
        choices=("auto", "on", "off", "device"),
        default="auto",
        help="keep decoded samples in memory across runs (auto: if under 2 GiB; "
        "device: in GPU memory)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The :class:`StudyConfig` of parsed options."""
    from utils.study.mosaiks import MosaiksConfig  # noqa: PLC0415
    from utils.study.study import StudyConfig  # noqa: PLC0415
    from utils.train import TrainConfig  # noqa: PLC0415

    args.run_dir = str(args.run_dir)
    train = TrainConfig(
        run_dir=args.run_dir,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        crop=args.crop,
        device=args.device,
        seed=args.seed,
        num_workers=args.num_workers,
        progress=False,
        tensorboard=False,
    )
    return StudyConfig(
        run_dir=args.run_dir,
        experiments=args.experiments,
        alphas=tuple(args.alphas),
        out_name=args.out_name,
        force=args.force,
        cache_data={"auto": "auto", "on": True, "off": False, "device": "device"}[args.cache],
        seeds=tuple(args.seeds or ()),
        calibration_alphas=tuple(args.calibration_alphas),
        calibrate=tuple(args.calibrate),
        select_mae_within=args.select_mae_within,
        models=tuple(args.models or ()),
        mosaiks=MosaiksConfig(
            **({"num_filters": args.mosaiks_filters} if args.mosaiks_filters else {})
        ),
        train=train,
    )


def prepare_data(run_dir: str, n: int, size: int) -> None:
    """Write the synthetic world and its shards unless the run already has shards."""
    from utils.hdf5_schema import split_files  # noqa: PLC0415
    from utils.paths import RunPaths  # noqa: PLC0415

    try:
        split_files(RunPaths.of(run_dir).shards, "train")
        return
    except FileNotFoundError:
        pass
    from utils.pipeline import STAGES, run_pipeline  # noqa: PLC0415

    stages = tuple(s for s in STAGES if s.name in ("image", "split_and_batch"))
    run_pipeline(run_dir, stages=stages, overrides={"image": {"n": n, "size": size}})


def main(cfg: StudyConfig, split_seeds: list[int] | None = None) -> None:
    """Run the study (on each split of ``split_seeds`` when given) and print its table."""
    from utils.study.repeated_splits import repeated_split_study  # noqa: PLC0415
    from utils.study.study import study, to_markdown  # noqa: PLC0415

    start = time.perf_counter()
    outputs = repeated_split_study(cfg, split_seeds) if split_seeds else study(cfg)
    print(to_markdown(outputs.table))
    print(
        f"{len(outputs.results)} experiments in {time.perf_counter() - start:.0f} s; "
        f"table {outputs.table_md}, plot {outputs.per_bin_png}"
    )


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    prepare_data(arguments.run_dir, arguments.n, arguments.size)
    main(config_from_args(arguments), arguments.split_seeds)
