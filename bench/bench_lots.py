"""Benchmark: LOTS heatmaps per second, batched (one call on 32 samples) against a loop of
one-sample calls, on the same model, inputs and iteration count.

    python -m bench.bench_lots [--batch 32] [--size 48] [--iterations 20] [--threads 2]

The model is the pipeline's own small ResNet (``utils.models.build_model``) when that
module is present, else a small residual CNN of the same shape defined here. Prints the
two rates and their ratio (goal: at least 4x on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from visualization.heatmaps import perturbation_heatmap
from visualization.lots import lots, push_target


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class SmallResNet(nn.Module):
    """A four-stage residual CNN with ``features`` and a linear ``head``."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        widths = [width, width * 2, width * 4, width * 8]
        blocks, cin = [], width
        for i, w in enumerate(widths):
            blocks.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def bench_model(channels: int) -> tuple[nn.Module, str]:
    """The pipeline's small ResNet if available, else :class:`SmallResNet`."""
    try:
        from utils.models import build_model  # noqa: PLC0415

        return build_model("resnet18", channels), "utils.models.build_model('resnet18')"
    except (ImportError, TypeError, ValueError):
        return SmallResNet(channels), "bench SmallResNet (utils.models.build_model unavailable)"


def get_args_parser() -> argparse.ArgumentParser:
    from utils.cli import make_parser  # noqa: PLC0415

    parser = make_parser("bench.bench_lots", __doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=48, help="image side in pixels")
    parser.add_argument("--channels", type=int, default=24)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    return parser


def main(argv: list[str] | None = None) -> float:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, name = bench_model(args.channels)
    model.eval()
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    lower, upper = torch.full((args.channels,), -4.0), torch.full((args.channels,), 4.0)
    target = push_target(model, x, 1.0)
    # rtol=0 and an unreachable push: every sample runs exactly `iterations` steps
    kw = dict(lower=lower, upper=upper, iterations=args.iterations, rtol=0.0, batch_size=args.batch)

    def batched() -> None:
        res = lots(model, x, target, **kw)
        perturbation_heatmap(x, res.x_adv, sigma=1.0)

    def one_by_one() -> None:
        for i in range(args.batch):
            t = type(target)(target.features[i : i + 1])
            res = lots(model, x[i : i + 1], t, **kw)
            perturbation_heatmap(x[i : i + 1], res.x_adv, sigma=1.0)

    def best(fn) -> float:  # noqa: ANN001
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    one_by_one_s, batched_s = best(one_by_one), best(batched)
    rate_loop, rate_batch = args.batch / one_by_one_s, args.batch / batched_s
    print(
        f"model: {name}; {args.batch} x {args.channels} x {args.size} x {args.size}, "
        f"{args.iterations} LOTS iterations, {args.threads} threads"
    )
    print(f"one-sample loop: {rate_loop:8.2f} heatmaps/s ({one_by_one_s:.2f} s)")
    print(f"batched ({args.batch}):   {rate_batch:8.2f} heatmaps/s ({batched_s:.2f} s)")
    ratio = rate_batch / rate_loop
    print(f"ratio batched / loop: {ratio:.2f}x (goal >= 4x)")
    return ratio


if __name__ == "__main__":
    main()
