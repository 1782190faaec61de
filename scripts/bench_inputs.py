#!/usr/bin/env python3
"""Worst-case inputs: the memory and time one allowed image can cost, and what is refused.

Every input is built here (nothing is read from disk): for each decoding path the largest
image the per-image memory budget admits (``handler.preprocess.decode_budget``: 4 bytes x
``max_pixels``, 200 MB at the default 50 MP), plus the inputs that are refused before any
pixel is decoded (bombs, truncated JPEGs, header floods, slow decoders). For each it prints
the answer (``ok`` or the HTTP status and reason), the time to decode and preprocess, the
estimated peak (``decode_cost``) and the measured peak growth of the process (Linux: peak
RSS reset through /proc/self/clear_refs before each input).

With ``--served`` the same inputs go to a running TorchServe (``scripts/serve.sh start``,
keys from key_file.json) one at a time, and the worker's own peak growth is read from
/proc/<worker pid>/status; the worker must keep its PID throughout.

    .venv/bin/python scripts/bench_inputs.py [--served] [--out bench/inputs.md]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from handler.preprocess import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    PreprocessSpec,
    decode_budget,
    decode_cost,
    decode_image,
    image_to_tensor,
    open_image,
)
from scripts.bench import encode, loopback_session  # noqa: E402

MB = 1_000_000


def side(pixels: float) -> int:
    return int(pixels**0.5)


def texture(width: int, height: int, bands: int = 3, noise: bool = False) -> np.ndarray:
    """Smooth gradients (with ``noise``, a little grain: compresses like a photo)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rng = np.random.default_rng(0)
    planes = [((x * (b + 1) + y * (3 - b)) % 256) for b in range(bands)]
    grain = rng.integers(0, 24, size=(height, width), dtype=np.uint8) if noise else 0
    return np.stack([(p + grain).astype(np.uint8) for p in planes], axis=-1)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def rle_bmp(width: int, height: int) -> bytes:
    """An 8-bit run-length BMP of one-pixel runs (Pillow's decoder for it is Python)."""
    pixels = (bytes([1, 7]) * width + b"\x00\x00") * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return header + info + palette + pixels


def rotated_png(width: int, height: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: a transposed copy is made
    return encode(Image.fromarray(texture(width, height)), "PNG", exif=exif.tobytes(), compress_level=1)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(Image.fromarray(texture(64, 64)), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def header_flood(fmt: str, count: int) -> bytes:
    """A small image behind ``count`` empty header items: JPEG comments, PNG chunks, GIF comments."""
    small = encode(Image.new("RGB", (64, 64), (90, 120, 150)).convert("P") if fmt == "GIF" else
                   Image.new("RGB", (64, 64), (90, 120, 150)), fmt)
    if fmt == "JPEG":
        return small[:2] + b"\xff\xfe\x00\x02" * count + small[2:]
    if fmt == "PNG":
        return small[:33] + png_chunk(b"aaAa", b"") * count + small[33:]
    flags = small[10]
    start = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    return small[:start] + b"\x21\xfe" + b"\x01a" * count + b"\x00" + small[start:]


def many_frames(fmt: str, count: int, size: int) -> bytes:
    frames = [Image.fromarray(np.full((size, size), i % 251, np.uint8)).convert("P") for i in range(count)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


def inputs(max_pixels: int) -> dict[str, Callable[[], bytes]]:
    """Name -> builder, sized for ``max_pixels`` (the larger ones take a few seconds to build)."""
    budget = decode_budget(max_pixels)
    at = lambda per_pixel: side(budget / per_pixel * 0.99)  # noqa: E731 - the side that fits the budget
    return {
        "RGB PNG at the pixel limit": lambda: encode(
            Image.fromarray(texture(side(max_pixels * 0.99), side(max_pixels * 0.99))), "PNG"
        ),
        "RGB JPEG at the pixel limit, q80": lambda: encode(
            Image.fromarray(texture(side(max_pixels * 0.99), side(max_pixels * 0.99), noise=True)), "JPEG", quality=80
        ),
        "RGBA PNG at the budget": lambda: encode(Image.fromarray(texture(at(8), at(8), 4), "RGBA"), "PNG"),
        "16-bit PNG at the budget": lambda: encode(Image.new("I;16", (at(5), at(5)), 40000), "PNG"),
        "float TIFF at the budget": lambda: encode(Image.new("F", (at(5), at(5)), 0.5), "TIFF", compression="tiff_deflate"),
        "CMYK TIFF at the budget": lambda: encode(Image.new("CMYK", (at(8), at(8))), "TIFF", compression="tiff_deflate"),
        "transparent GIF at the budget": lambda: encode(Image.new("P", (at(9), at(9))), "GIF", transparency=0),
        "WebP at the budget": lambda: encode(Image.new("RGB", (at(16), at(16)), (200, 100, 50)), "WEBP", lossless=True),
        "EXIF-rotated PNG at the budget": lambda: rotated_png(at(8), at(8)),
        "GIF, 2,000 frames": lambda: many_frames("GIF", 2000, 256),
        "TIFF, 2,000 pages": lambda: many_frames("TIFF", 2000, 64),
        # refused before any pixel is decoded
        "35-byte GIF, 7000x7000 screen": lambda: encode(Image.new("P", (7000, 7000)), "GIF", transparency=0),
        "140-byte WebP, 7000x7000": lambda: encode(Image.new("RGBA", (7000, 7000)), "WEBP", lossless=True),
        "16-bit PNG, 7000x7000": lambda: encode(Image.new("I;16", (7000, 7000)), "PNG"),
        "float TIFF, 7000x7000": lambda: encode(Image.new("F", (7000, 7000)), "TIFF", compression="tiff_deflate"),
        "693-byte JPEG claiming 7000x7000": lambda: jpeg_claiming(7000, 7000),
        "JPEG with 5 M comment markers": lambda: header_flood("JPEG", 5_000_000),
        "PNG with 1.6 M empty chunks": lambda: header_flood("PNG", 1_600_000),
        "GIF with 10 M comment sub-blocks": lambda: header_flood("GIF", 10_000_000),
        "run-length BMP, 20 MB": lambda: rle_bmp(4000, 2500),
    }


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def reset_peak(pid: int | str = "self") -> None:
    """Reset the peak RSS (VmHWM) of a process to its current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _measure_child(data: bytes, spec: PreprocessSpec, results: Any) -> None:
    estimate = None
    try:
        estimate = decode_cost(open_image(data, max_pixels=spec.max_pixels, draft_size=spec.draft_size))
    except ImageDecodeError:
        pass
    base = rss_kb()
    reset_peak()
    start = time.perf_counter()
    try:
        image_to_tensor(decode_image(data, max_pixels=spec.max_pixels, draft_size=spec.draft_size), spec)
        answer = "ok"
    except ImageDecodeError as exc:
        answer = f"{exc.status} {exc.reason}"
    seconds = time.perf_counter() - start
    peak = (rss_kb(field="VmHWM") - base) * 1024
    results.put({"answer": answer, "seconds": seconds, "estimate": estimate, "peak": peak})


def measure_local(data: bytes, spec: PreprocessSpec) -> dict[str, Any]:
    """Decode + preprocess ``data`` in a fresh process (freed memory a previous input left in
    the allocator would hide the next one's growth); its answer, time and peak growth."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_measure_child, args=(data, spec, results))
    child.start()
    row = results.get(timeout=600)
    child.join()
    return row


def served_worker(session: Any, management: str, key: str, model: str) -> int:
    described = session.get(f"{management}/models/{model}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    described.raise_for_status()
    return int(described.json()[0]["workers"][0]["pid"])


def measure_served(session: Any, url: str, key: str, pid: int, data: bytes) -> dict[str, Any]:
    base = rss_kb(pid)
    reset_peak(pid)
    start = time.perf_counter()
    resp = session.put(url, data=data, headers={"Authorization": f"Bearer {key}"}, timeout=130)
    seconds = time.perf_counter() - start
    high = rss_kb(pid, "VmHWM") * 1024
    answer = "ok" if resp.status_code == 200 else str(resp.status_code)
    return {"answer": answer, "seconds": seconds, "peak": high - base * 1024, "worker_peak": high}


def batch_row(session: Any, url: str, key: str, pid: int, data: bytes, count: int) -> str:
    """``count`` copies of one at-budget image sent at once: one batch, decoded in parallel
    (after a batch of small photos, so the model's batch-size activations are already there)."""
    from concurrent.futures import ThreadPoolExecutor

    small = encode(Image.fromarray(texture(800, 600, noise=True)), "JPEG", quality=90)
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda _: session.put(url, data=small, headers={"Authorization": f"Bearer {key}"}, timeout=130),
                      range(count)))
    base = rss_kb(pid)
    reset_peak(pid)
    start = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        codes = list(pool.map(
            lambda _: session.put(url, data=data, headers={"Authorization": f"Bearer {key}"}, timeout=130).status_code,
            range(count),
        ))
    seconds = time.perf_counter() - start
    high = rss_kb(pid, "VmHWM")
    answers = "ok" if set(codes) == {200} else ",".join(map(str, codes))
    return (f"| {count} x RGBA PNG at the budget, at once | {count * len(data):,} | | | | | {answers} | "
            f"{seconds:.2f} | {high // 1000} (+{(high - base) // 1000}) | yes |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel limit (default 50000000)")
    parser.add_argument("--image-size", type=int, default=512, help="model input side (default 512, the shipped size)")
    parser.add_argument("--served", action="store_true", help="also send each input to the running TorchServe")
    parser.add_argument("--model", default="watermark", help="served model name (default watermark)")
    parser.add_argument("--only", default="", help="run only inputs whose name contains this text")
    parser.add_argument("--batch", type=int, default=8, help="served: copies of the RGBA image sent at once (default 8)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)

    spec = PreprocessSpec(image_size=args.image_size, max_pixels=args.max_pixels)
    session = url = key = management = pid = None
    if args.served:
        keys = json.loads((REPO / "key_file.json").read_text())
        key = keys["inference"]["key"]
        session = loopback_session()
        url, management = f"http://127.0.0.1:8080/predictions/{args.model}", "http://127.0.0.1:8081"
        pid = served_worker(session, management, keys["management"]["key"], args.model)

    header = "| input | bytes | answer | decode + preprocess s | estimated peak MB | measured peak MB |"
    if args.served:
        header += " served answer | served s | worker peak RSS MB (growth) | worker PID kept |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    print(f"per-image budget {decode_budget(args.max_pixels) / MB:.0f} MB, max_pixels {args.max_pixels}, "
          f"image_size {args.image_size}, pid {os.getpid()}")
    print(lines[0])
    print(lines[1])
    for name, build in inputs(args.max_pixels).items():
        if args.only and args.only not in name:
            continue
        data = build()
        row = measure_local(data, spec)
        estimate = "-" if row["estimate"] is None else f"{row['estimate'] / MB:.0f}"
        line = (f"| {name} | {len(data):,} | {row['answer']} | {row['seconds']:.2f} | {estimate} | "
                f"{row['peak'] / MB:.0f} |")
        if args.served:
            served = measure_served(session, url, key, pid, data)
            kept = served_worker(session, management, json.loads((REPO / "key_file.json").read_text())["management"]["key"], args.model) == pid
            line += (f" {served['answer']} | {served['seconds']:.2f} | {served['worker_peak'] / MB:.0f} "
                     f"(+{served['peak'] / MB:.0f}) | {'yes' if kept else 'NO'} |")
        print(line, flush=True)
        lines.append(line)
    if args.served and not args.only:
        line = batch_row(session, url, key, pid, inputs(args.max_pixels)["RGBA PNG at the budget"](), args.batch)
        print(line, flush=True)
        lines.append(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
