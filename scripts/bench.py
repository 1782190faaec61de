#!/usr/bin/env python3
"""Inference benchmark: raw backends, preprocessing by input size, and TorchServe end to end.

Everything is measured in ONE run on this machine and printed as a markdown table
(also written to --out, default bench/results.md):

* raw model images/s at batch 1 and 8 for each backend (--backends): eager PyTorch,
  TorchScript (model.pt), onnxruntime fp32 (model.onnx) and int8 (model.int8.onnx),
  AOTInductor (model.pt2), TorchScript in bf16 (measured only: not an export format),
  plus CUDA rows on a GPU;
* preprocessing time per image (decode + resize + normalise) for a 600 x 600 JPEG, a
  12-megapixel JPEG and a large PNG, fast path (JPEG draft decoding) against the plain
  full decode, next to the model's time per image;
* the model served by a real TorchServe on loopback ports (token auth on), one archive per
  backend and worker layout, driven by concurrent HTTP clients so that batches form
  (images/s, latency under load, served / raw ratios), then by one client at a time
  (the latency of a lone request);
* the targets: the shipped CPU backend (int8) against fp32 TorchScript in the same run.

Timings are medians over --repeats repetitions. The model is the export bundle given by
--export (default: artifacts/real/export from `make train-real`, the product's 512 px
model, else artifacts/export from `make demo`); without one, an untrained model of the same
architecture at --image-size (default 512) is exported to a temporary folder (speed does
not depend on the weights). A bundle without model.int8.onnx or model.pt2 gets them in the
temporary copy, made for speed only: an int8 model calibrated on photos that packages ship
(not quality-checked; `python -m train export-int8` makes the checked one) and a .pt2
compiled from an untrained model of the same architecture. Run it with `make bench`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if __name__ == "__main__":
    # As scripts/serve.sh and the Dockerfile set it, before torch loads its OpenMP runtime:
    # idle threads sleep instead of spinning (faster here, raw and served). Only when run
    # as a script, so importing this module changes nothing.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from handler.preprocess import PreprocessSpec, bytes_to_tensor  # noqa: E402
from train.io import write_text_atomic  # noqa: E402

VENV_BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- helpers


def loopback_session() -> requests.Session:
    """A session that ignores http(s)_proxy: the server is on loopback and the keys must not leave it."""
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_rate(fn: Callable[[], Any], items: int, repeats: int, warmup: int = 1) -> float:
    """Items/s of ``fn`` (which processes ``items`` items) at its median run time."""
    return items / median_seconds(fn, repeats, warmup)


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    return 1000 * median_seconds(fn, repeats, warmup)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def real_mosaic(width: int, height: int) -> Image.Image:
    """Real photos (scikit-image, scikit-learn) tiled at native scale: photo-like detail."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    tiles = [Image.fromarray(a) for a in (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea())]
    tiles += [Image.fromarray(a) for a in load_sample_images().images]
    canvas = Image.new("RGB", (width, height))
    x = y = k = 0
    while y < height:
        tile = tiles[k % len(tiles)]
        canvas.paste(tile, (x, y))
        x, k = x + tile.width, k + 1
        if x >= width:
            x, y = 0, y + min(t.height for t in tiles)
    return canvas


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def inputs_by_size() -> dict[str, bytes]:
    mosaic = real_mosaic(4000, 3000)
    return {
        "600 x 600 JPEG": encode(mosaic.crop((0, 0, 600, 600)), "JPEG", quality=90),
        "4000 x 3000 JPEG (12 MP)": encode(mosaic, "JPEG", quality=90),
        "3000 x 2000 PNG": encode(mosaic.crop((0, 0, 3000, 2000)), "PNG"),
    }


# ----------------------------------------------------------------------------- model


BACKENDS = ("eager", "torchscript", "onnx", "int8", "pt2", "bf16")


def calibration_photos(spec: PreprocessSpec, count: int, workdir: Path) -> list[Path]:
    """``count`` crops of the shipped photos as JPEG files (int8 calibration for speed runs)."""
    mosaic = real_mosaic(1600, 1200)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        side = int(rng.integers(300, 900))
        x, y = int(rng.integers(0, 1600 - side)), int(rng.integers(0, 1200 - side))
        path = workdir / f"calibration-{i}.jpg"
        mosaic.crop((x, y, x + side, y + side)).save(path, quality=90)
        paths.append(path)
    return paths


def prepare_export(export: Path | None, workdir: Path, image_size: int, backends: set[str]) -> tuple[Path, str, dict[str, str]]:
    """A bundle with every file the chosen backends need; returns (folder, description, notes).

    Notes: ``int8`` / ``pt2`` when that model was made here for speed only, ``int8_checked``
    when the bundle's own int8 model passed its ``export-int8`` check."""
    from train.export import ONNX_FILE, PT2_FILE, compile_pt2, export_model, export_onnx
    from train.model import WatermarkNet
    from train.quantize import INT8_FILE, quantize_onnx

    notes: dict[str, str] = {}
    bundle = workdir / "export"
    if export is not None and (export / "model.pt").is_file():
        shutil.copytree(export, bundle)
        what = f"{export} (trained export)"
    else:
        torch.manual_seed(0)
        export_model(WatermarkNet(), PreprocessSpec(image_size=image_size), {"threshold": 0.5, "rule": "manual"}, bundle,
                     info={"model_name": "watermark"})  # fmt: skip
        what = "untrained Inception V3 of the same architecture (no --export bundle found)"
    spec = PreprocessSpec.load(bundle / "preprocess.json")
    if backends & {"onnx", "int8"} and not (bundle / ONNX_FILE).is_file():
        export_onnx(bundle)
    if "int8" in backends and not (bundle / INT8_FILE).is_file():
        (workdir / "calibration").mkdir()
        photos = calibration_photos(spec, 16, workdir / "calibration")
        (bundle / INT8_FILE).write_bytes(quantize_onnx(bundle / ONNX_FILE, photos, spec, workdir / "calibration"))
        (bundle / "threshold.int8.json").write_text((bundle / "threshold.json").read_text())
        notes["int8"] = "int8 model made here for speed only (calibrated on 16 shipped photos, no quality check)"
        # create_mar.sh archives an int8 model only after a passed check; this temporary copy
        # is archived for the speed rows alone, and its record says so.
        info_path = bundle / "model_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        info["int8"] = {"passed": True, "speed_only": True, "note": notes["int8"], "failures": []}
        info_path.write_text(json.dumps(info))
    elif "int8" in backends:
        info = json.loads((bundle / "model_info.json").read_text()).get("int8", {}) if (bundle / "model_info.json").is_file() else {}
        if info.get("passed"):
            f, a = info["check"]["int8"], info["check"]["fp32"]
            notes["int8_checked"] = (
                f"the bundle's checked int8 model: on {info['check_images']} held-out photos F1 {f['f1']:.4f} (fp32 {a['f1']:.4f}), "
                f"ROC-AUC {f['roc_auc']:.4f} (fp32 {a['roc_auc']:.4f}), {info['check_verdicts_changed']} verdict(s) changed"
            )
    if "pt2" in backends and not (bundle / PT2_FILE).is_file():
        torch.manual_seed(0)
        compile_pt2(WatermarkNet().eval(), spec, bundle / PT2_FILE, max_batch=64)
        notes["pt2"] = ".pt2 compiled here from an untrained model of the same architecture (speed only)"
    return bundle, what, notes


def eager_model(bundle: Path) -> torch.nn.Module:
    from train.model import model_from_config

    info_path = bundle / "model_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    config = info.get("config", {})
    return model_from_config(config).eval()


def bf16_torchscript(bundle: Path, size: int) -> torch.jit.ScriptModule:
    """The TorchScript model in bfloat16, frozen (oneDNN bf16 kernels), taking float32 input."""

    class Bf16(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model.to(torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x.to(torch.bfloat16)).float()

    import warnings

    scripted = torch.jit.load(str(bundle / "model.pt"), map_location="cpu").eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Bf16(scripted).eval(), torch.zeros(2, 3, size, size).contiguous(memory_format=torch.channels_last))
        return torch.jit.freeze(traced)


RAW_NAMES = {
    "eager": "eager (PyTorch)", "torchscript": "TorchScript", "onnx": "ONNX fp32", "int8": "ONNX int8",
    "pt2": "AOTInductor .pt2", "bf16": "TorchScript bf16 (measured only)",
}  # fmt: skip


def raw_rows(
    bundle: Path, spec: PreprocessSpec, threads: int, repeats: int, backends: set[str]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from train.export import onnx_runner

    size = spec.image_size
    runners: dict[str, Callable[[torch.Tensor], Any]] = {}

    def torch_runner(model: Callable[[torch.Tensor], Any], channels_last: bool) -> Callable[[torch.Tensor], Any]:
        def run(x: torch.Tensor) -> Any:
            with torch.inference_mode():  # as the handler feeds TorchScript: channels_last
                return model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

        return run

    if "eager" in backends:
        runners["eager"] = torch_runner(eager_model(bundle), False)
    if "torchscript" in backends or "bf16" in backends:  # bf16 is compared with TorchScript
        runners["torchscript"] = torch_runner(torch.jit.load(str(bundle / "model.pt"), map_location="cpu").eval(), True)
    if "onnx" in backends:
        runners["onnx"] = onnx_runner(bundle / "model.onnx", threads)
    if "int8" in backends:
        runners["int8"] = onnx_runner(bundle / "model.int8.onnx", threads)
    if "pt2" in backends:
        from train.export import load_pt2

        runners["pt2"] = torch_runner(load_pt2(bundle / "model.pt2"), False)
    if "bf16" in backends:
        runners["bf16"] = torch_runner(bf16_torchscript(bundle, size), True)

    rows, rates = [], {}
    for key, run in runners.items():
        for batch in (1, 8):
            x = torch.randn(batch, 3, size, size)
            iterations = 4 if batch == 1 else 1
            rate = median_rate(lambda: [run(x) for _ in range(iterations)], batch * iterations, repeats)
            rates[f"{key}|{batch}"] = rate
            rows.append({"backend": RAW_NAMES[key], "device": "cpu", "batch": batch, "images/s": rate, "ms/image": 1000 / rate})
    if torch.cuda.is_available():  # GPU rows: fp32 and fp16 autocast, channels_last, pinned input
        device = torch.device("cuda")
        gpu_model = torch.jit.load(str(bundle / "model.pt"), map_location=device).eval().to(memory_format=torch.channels_last)
        for half in (False, True):
            for batch in (1, 8, 32, 64):
                host = torch.randn(batch, 3, size, size).pin_memory()

                def run_gpu() -> None:
                    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                        x = host.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                        gpu_model(x)
                    torch.cuda.synchronize()

                rate = median_rate(lambda: [run_gpu() for _ in range(5)], batch * 5, repeats, warmup=3)
                name = f"TorchScript CUDA {'fp16 autocast' if half else 'fp32'}"
                rows.append({"backend": name, "device": torch.cuda.get_device_name(), "batch": batch, "images/s": rate, "ms/image": 1000 / rate})
    return rows, rates


def preprocess_rows(spec: PreprocessSpec, repeats: int) -> list[dict[str, Any]]:
    fast = spec if spec.jpeg_draft else PreprocessSpec.from_dict({**spec.to_dict(), "jpeg_draft": True})
    plain = PreprocessSpec.from_dict({**spec.to_dict(), "jpeg_draft": False})
    rows = []
    for name, data in inputs_by_size().items():
        rows.append({
            "input": name, "bytes": len(data),
            "fast ms": median_ms(lambda: bytes_to_tensor(data, fast), repeats * 2),
            "plain ms": median_ms(lambda: bytes_to_tensor(data, plain), repeats * 2),
        })  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- served


class Served:
    """A private TorchServe on free loopback ports serving one archive (token auth on)."""

    def __init__(self, workdir: Path, archive: Path) -> None:
        self.dir = workdir
        self.store = workdir / "store"
        self.store.mkdir(parents=True)
        shutil.copy(archive, self.store / "watermark.mar")
        self.ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc_i", "grpc_m")}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}/predictions/watermark"

    def __enter__(self) -> Served:
        config = self.dir / "config.properties"
        config.write_text(
            "\n".join([
                f"inference_address=http://127.0.0.1:{self.ports['inference']}",
                f"management_address=http://127.0.0.1:{self.ports['management']}",
                f"metrics_address=http://127.0.0.1:{self.ports['metrics']}",
                "grpc_inference_address=127.0.0.1", "grpc_management_address=127.0.0.1",
                f"grpc_inference_port={self.ports['grpc_i']}", f"grpc_management_port={self.ports['grpc_m']}",
                f"model_store={self.store}", "load_models=watermark.mar", "max_request_size=20971520",
                "max_response_size=20971520", "decode_input_request=false", "default_workers_per_model=1",
                "disable_system_metrics=true",
            ]) + "\n",
            encoding="utf-8",
        )  # fmt: skip
        env = {**os.environ, "TMPDIR": str(self.dir), "TEMP": str(self.dir)}
        with open(self.dir / "torchserve.out", "wb") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config)],
                cwd=self.dir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 180) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"TorchServe exited; see {self.dir / 'torchserve.out'}")
            key_file = self.dir / "key_file.json"
            if key_file.exists():
                try:
                    self.key = json.loads(key_file.read_text())["inference"]["key"]
                    with loopback_session() as session:
                        probe = session.put(self.url, data=encode(Image.new("RGB", (64, 64)), "JPEG"), headers=self.headers, timeout=30)
                    if probe.status_code == 200:
                        return
                except (requests.RequestException, ValueError, KeyError):
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"TorchServe not ready after {timeout:.0f} s; see {self.dir / 'torchserve.out'}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def drive(served: Served, body: bytes, clients: int, seconds: float, warmup: float, windows: int) -> dict[str, float]:
    """``clients`` threads PUT ``body`` back to back for ``warmup`` + ``windows`` x ``seconds``;
    images/s is the median over the measured windows, latencies are pooled."""
    import requests

    start_at = time.monotonic() + warmup
    stop_at = start_at + windows * seconds
    latencies: list[float] = []
    finished: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        session = loopback_session()
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                return
            try:
                ok = session.put(served.url, data=body, headers=served.headers, timeout=60).status_code == 200
            except requests.RequestException:
                ok = False
            t1 = time.monotonic()
            with lock:
                if not ok:
                    errors[0] += 1
                elif t0 >= start_at and t1 <= stop_at:
                    latencies.append(t1 - t0)
                    finished.append(t1)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(latencies)
    per_window = [sum(start_at + w * seconds <= t < start_at + (w + 1) * seconds for t in finished) / seconds for w in range(windows)]
    return {
        "images/s": statistics.median(per_window), "p50 ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p95 ms": 1000 * lat[int(len(lat) * 0.95)] if lat else float("nan"), "errors": errors[0], "requests": len(lat),
    }  # fmt: skip


def lone_latency(served: Served, body: bytes, requests_: int = 20) -> float:
    """p50 latency in ms of ``requests_`` requests sent one at a time (after two unmeasured ones)."""
    times = []
    with loopback_session() as session:
        for i in range(requests_ + 2):
            t0 = time.perf_counter()
            response = session.put(served.url, data=body, headers=served.headers, timeout=60)
            if response.status_code != 200:
                raise RuntimeError(f"lone request failed with {response.status_code}: {response.text[:200]}")
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def build_archive(bundle: Path, fmt: str, store: Path, workers: int, threads: int, batch: int, delay: int) -> Path:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "create_mar.sh"), "--export-dir", str(bundle), "--format", fmt, "--model-store", str(store),
         "--archive-name", f"watermark-{fmt}-{workers}x{threads}", "--workers", str(workers), "--threads", str(threads),
         "--batch-size", str(batch), "--max-batch-delay", str(delay), "--force"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"create_mar.sh failed:\n{result.stderr}")
    return store / f"watermark-{fmt}-{workers}x{threads}.mar"


# ----------------------------------------------------------------------------- report


def fmt_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


SHIPPED = "onnx-int8"  # the CPU backend the product ships (README "Inference speed")


def best_served(served: list[dict[str, Any]], fmt: str) -> dict[str, Any] | None:
    """The fastest worker layout of one archive format."""
    rows = [r for r in served if r["format"] == fmt]
    return max(rows, key=lambda r: r["images/s"]) if rows else None


def target_rows(
    pre: list[dict[str, Any]], served: list[dict[str, Any]], ts8: float, int8_check: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every target, met or missed by how much."""

    def check(name: str, value: float | None, goal: float, higher: bool, unit: str = "", digits: int = 2) -> dict[str, Any]:
        if value is None:
            return {"target": name, "measured": "not measured", "result": "-"}
        ok = value >= goal if higher else value <= goal
        gap = (value / goal - 1) * 100 if goal else float("inf")
        return {"target": name, "measured": f"{value:.{digits}f}{unit}", "result": "met" if ok else f"missed by {abs(gap):.0f} %"}

    best = {fmt: best_served(served, fmt) for fmt in ("torchscript", "onnx", SHIPPED)}
    ts_default = next((r for r in served if r["format"] == "torchscript" and r["workers"] == 1), None)
    shipped = best[SHIPPED]
    twelve = next(r for r in pre if "12 MP" in r["input"])
    rows = [
        check(f"served {SHIPPED} (shipped) / raw TorchScript fp32 b8 >= 3", shipped["images/s"] / ts8 if shipped else None, 3.0, True),
        check(
            f"lone-request p50: {SHIPPED} / served TorchScript fp32 <= 0.5",
            shipped["lone p50 ms"] / ts_default["lone p50 ms"] if shipped and ts_default else None, 0.5, False,
        ),
    ]
    if int8_check and int8_check.get("check"):
        fp32, int8 = int8_check["check"]["fp32"], int8_check["check"]["int8"]
        worst = max(fp32["f1"] - int8["f1"], fp32["roc_auc"] - int8["roc_auc"])
        rows.append(check("int8 F1 and ROC-AUC drop vs fp32 <= 0.005 (export-int8 check)", worst, 0.005, False, digits=4))
    else:
        rows.append({"target": "int8 F1 and ROC-AUC drop vs fp32 <= 0.005", "measured": "not checked (no export-int8 check in the bundle)", "result": "-"})
    rows += [
        check("served TorchScript / raw TorchScript b8 >= 0.9", best["torchscript"]["images/s"] / ts8 if best["torchscript"] else None, 0.9, True),
        check("served ONNX fp32 / raw TorchScript b8 >= 1.5", best["onnx"]["images/s"] / ts8 if best["onnx"] else None, 1.5, True),
        check("12 MP JPEG preprocessing <= 10 % of TorchScript b8 model time", twelve["% of TorchScript b8 model time"], 10.0, False, " %"),
    ]
    return rows


def default_export() -> Path | None:
    """The product's model if trained here (make train-real), else the demo's; None when neither exists."""
    for candidate in (REPO / "artifacts" / "real" / "export", REPO / "artifacts" / "export"):
        if (candidate / "model.pt").is_file():
            return candidate
    return None


def parse_backends(text: str) -> set[str]:
    chosen = {b.strip() for b in text.split(",") if b.strip()}
    unknown = chosen - set(BACKENDS)
    if unknown or "torchscript" not in chosen:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed are {', '.join(BACKENDS)}, comma-separated, torchscript always included")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="export bundle (default artifacts/real/export, else artifacts/export)")
    parser.add_argument("--image-size", type=int, default=512, help="input size of the untrained stand-in when there is no bundle (default 512)")
    parser.add_argument("--backends", type=parse_backends, default=set(BACKENDS), help=f"comma-separated subset of {','.join(BACKENDS)} (default all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.md", help="markdown file to write (default bench/results.md)")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions per measurement; the median is reported (default 5)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients against TorchServe (default 16)")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per measured window of load (default 10)")
    parser.add_argument("--windows", type=int, default=3, help="measured windows per served configuration; the median is reported (default 3)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before measuring (default 5)")
    parser.add_argument("--lone-requests", type=int, default=20, help="requests sent one at a time per served configuration (default 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="TorchServe batchSize (default 8)")
    parser.add_argument("--max-batch-delay", type=int, default=50, help="TorchServe maxBatchDelay in ms (default 50)")
    parser.add_argument("--no-served", action="store_true", help="skip the TorchServe part (raw and preprocessing only)")
    args = parser.parse_args(argv)
    for name in ("repeats", "windows", "clients", "batch_size", "max_batch_delay", "lone_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be > 0 and --warmup >= 0")
    if not 75 <= args.image_size <= 2048:
        parser.error(f"--image-size {args.image_size}: allowed is 75 to 2048")
    export = args.export if args.export is not None else default_export()
    if args.export is not None and not (args.export / "model.pt").is_file():
        parser.error(f"--export {args.export}: no model.pt there; run `make demo` or `make train-real`, or leave --export out")

    threads = torch.get_num_threads()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        bundle, what, notes = prepare_export(export, work, args.image_size, args.backends)
        spec = PreprocessSpec.load(bundle / "preprocess.json")
        info = json.loads((bundle / "model_info.json").read_text()) if (bundle / "model_info.json").is_file() else {}
        int8_check = info.get("int8") if "int8_checked" in notes else None  # not for a speed-only int8 model made here
        print(f"model: {what}; image size {spec.image_size}; torch threads {threads}", flush=True)
        for note in notes.values():
            print(f"note: {note}", flush=True)
        raw, rates = raw_rows(bundle, spec, threads, args.repeats, args.backends)
        print(fmt_table(raw, ["backend", "device", "batch", "images/s", "ms/image"]), flush=True)
        pre = preprocess_rows(spec, args.repeats)
        ts8 = rates["torchscript|8"]
        fastest = max((k for k in rates if k.endswith("|8")), key=rates.get)
        for row in pre:
            row["% of TorchScript b8 model time"] = 100 * row["fast ms"] / (1000 / ts8)
            row[f"% of {RAW_NAMES[fastest[:-2]]} b8 model time"] = 100 * row["fast ms"] / (1000 / rates[fastest])
        pre_columns = ["input", "bytes", "fast ms", "plain ms", "% of TorchScript b8 model time", f"% of {RAW_NAMES[fastest[:-2]]} b8 model time"]
        print(fmt_table(pre, pre_columns), flush=True)

        served_rows = []
        if not args.no_served:
            body = inputs_by_size()["600 x 600 JPEG"]
            cores = os.cpu_count() or 1
            formats = [f for f, b in (("torchscript", "torchscript"), ("onnx", "onnx"), (SHIPPED, "int8"), ("pt2", "pt2")) if b in args.backends]
            configs = [(fmt, 1, threads) for fmt in formats]
            if cores >= 2:  # the alternative split of the same cores: two workers, fewer threads each
                configs += [(fmt, 2, max(1, cores // 2)) for fmt in formats if fmt != "pt2"]
            for fmt, workers, worker_threads in configs:
                archive = build_archive(bundle, fmt, work / "archives", workers, worker_threads, args.batch_size, args.max_batch_delay)
                with Served(work / f"ts-{fmt}-{workers}", archive) as served:
                    result = drive(served, body, args.clients, args.seconds, args.warmup, args.windows)
                    lone = lone_latency(served, body, args.lone_requests)
                row = {
                    "archive": f"{fmt}, {workers} worker x {worker_threads} threads", "format": fmt, "workers": workers, **result,
                    "lone p50 ms": lone, "served / raw TorchScript b8": result["images/s"] / ts8,
                }  # fmt: skip
                served_rows.append(row)
                print(fmt_table([row], SERVED_COLUMNS), flush=True)

    header = [
        f"# Inference benchmark ({time.strftime('%Y-%m-%d %H:%M', time.localtime(started))})",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        f"- torch {torch.__version__}, torch threads {threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"Python {platform.python_version()}",
        f"- model: {what}; input {spec.image_size} x {spec.image_size}",
        *[f"- {note}" for note in notes.values()],
        f"- medians of {args.repeats} repetitions; served: {args.clients} concurrent clients, {args.warmup:g} s warm-up, then the "
        f"median of {args.windows} windows of {args.seconds:g} s; 600 x 600 JPEG bodies, batchSize {args.batch_size}, "
        f"maxBatchDelay {args.max_batch_delay} ms; lone p50: {args.lone_requests} requests one at a time",
        "",
        "## Raw model",
        "",
        fmt_table(raw, ["backend", "device", "batch", "images/s", "ms/image"]),
        "",
        "## Preprocessing per image (decode + resize + normalise; fast = JPEG draft decoding)",
        "",
        fmt_table(pre, pre_columns),
    ]
    if served_rows:
        header += ["", "## Served by TorchServe (HTTP end to end)", "", fmt_table(served_rows, SERVED_COLUMNS)]
    header += ["", "## Targets", "", fmt_table(target_rows(pre, served_rows, ts8, int8_check), ["target", "measured", "result"])]
    report = "\n".join(header) + "\n"
    write_text_atomic(args.out, report)
    print()
    print(report)
    print(f"written: {args.out} ({time.time() - started:.0f} s)")
    return 0


SERVED_COLUMNS = ["archive", "images/s", "p50 ms", "p95 ms", "lone p50 ms", "errors", "requests", "served / raw TorchScript b8"]


if __name__ == "__main__":
    sys.exit(main())
