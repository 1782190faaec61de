#!/usr/bin/env python
"""Training-speed benchmark: what the cache fill and a fine-tuning step cost, by cut and precision.

In one run, on this machine, with random inputs of the given size (no data needed):

1. forward seconds per image from pixels to the cache cut (what filling the feature
   cache costs) and through the whole network, for float32 / bfloat16 and NCHW /
   channels-last;
2. seconds per training item (forward, backward, AdamW step; batch 16) when fine-tuning
   from each of the given blocks, starting from cached features, float32 and bfloat16
   (channels-last);
3. prints a markdown table with the ratios against float32 NCHW, and writes it to
   ``--out`` (atomically) when given.

Usage::

    .venv/bin/python scripts/bench_train.py [--size 512] [--from Mixed_7a Mixed_6e Mixed_6a] [--out bench/train.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.io import write_bytes_atomic  # noqa: E402
from train.model import BLOCKS, Runtime, WatermarkNet, block_index, set_train_mode, set_trainable  # noqa: E402


def seconds_per_item(fn: Callable[[], object], items: int, repeats: int) -> float:
    """Best of ``repeats`` timed calls after one warm-up, per item."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / items


def forward_rows(size: int, batch: int, repeats: int, cut: int) -> list[tuple[str, float, float]]:
    rows = []
    for channels_last in (False, True):
        for amp in ("none", "bf16"):
            runtime = Runtime(amp=amp, channels_last=channels_last)
            model = runtime.prepare(WatermarkNet().eval())
            x = runtime.input(torch.randn(batch, 3, size, size))

            def run(stop: int, model=model, x=x, runtime=runtime) -> torch.Tensor:
                with torch.inference_mode(), runtime.autocast():
                    return model.features(x, stop=stop)

            label = f"{'channels-last' if channels_last else 'NCHW'}, {'bfloat16' if amp == 'bf16' else 'float32'}"
            rows.append((label, seconds_per_item(lambda: run(cut), batch, repeats), seconds_per_item(lambda: run(len(BLOCKS)), batch, repeats)))
    return rows


def training_rows(size: int, batch: int, repeats: int, starts: list[str]) -> list[tuple[str, tuple[int, ...], float, float]]:
    rows = []
    for name in starts:
        start = block_index(name)
        times = []
        for amp in ("none", "bf16"):
            runtime = Runtime(amp=amp)
            model = runtime.prepare(WatermarkNet())
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            with torch.no_grad():
                features = model.features(runtime.input(torch.randn(batch, 3, size, size)), stop=start)
            set_trainable(model, name)
            set_train_mode(model, name)
            labels = torch.randint(0, 2, (batch, 1)).float()

            def step(model=model, optimizer=optimizer, runtime=runtime, features=features, labels=labels) -> None:
                optimizer.zero_grad(set_to_none=True)
                with runtime.autocast():
                    logits, _ = model.forward_from(features, start)
                torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels).backward()
                optimizer.step()

            times.append(seconds_per_item(step, batch, repeats))
        rows.append((name, tuple(features.shape[1:]), times[0], times[1]))
    return rows


def render(size: int, cut_name: str, fwd: list, trn: list) -> str:
    base_cut, base_full = fwd[0][1], fwd[0][2]
    lines = [
        f"Forward, seconds per image at {size} px (cache fill = pixels to after {cut_name}; ratio against float32 NCHW):",
        "",
        f"| layout, precision | to {cut_name} | ratio | whole network | ratio |",
        "|---|---|---|---|---|",
    ]
    for label, cut, full in fwd:
        lines.append(f"| {label} | {cut:.3f} | {base_cut / cut:.2f} | {full:.3f} | {base_full / full:.2f} |")
    lines += [
        "",
        f"Fine-tuning, seconds per item (batch of cached features, forward + backward + AdamW; channels-last) at {size} px:",
        "",
        "| trained from | input features | float32 | bfloat16 | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, shape, fp32, bf16 in trn:
        lines.append(f"| {name} | {' x '.join(map(str, shape))} | {fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (default 512)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per row, best taken (default 2)")
    parser.add_argument("--cut", default="Mixed_6e", help="first trained block; the cache holds what comes before (default Mixed_6e)")
    parser.add_argument("--from", dest="starts", nargs="+", default=["Mixed_7a", "Mixed_6e", "Mixed_6a"], help="blocks to fine-tune from")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    for name in [args.cut, *args.starts]:
        block_index(name)  # a clear error for an unknown block
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cut = block_index(args.cut)
    text = render(args.size, BLOCKS[cut - 1], forward_rows(args.size, args.batch, args.repeats, cut), training_rows(args.size, args.batch, args.repeats, args.starts))
    text = f"torch {torch.__version__}, {torch.get_num_threads()} threads\n\n" + text
    print(text)
    if args.out:
        write_bytes_atomic(args.out, text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
