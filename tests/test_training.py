"""Training run end to end on a tiny dataset: MLflow store, checkpoints, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from train.cli import main as cli_main
from train.export import load_export
from tests.conftest import write_dataset
from train.config import TrainConfig
from train.training import run_training

TINY = dict(
    weights="none", image_size=75, epochs=2, head_epochs=1, unfreeze_from="Mixed_7c",
    batch_size=8, progress=False, augment=False, patience=5, lr=1e-3,
)


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(data=str(data), output=str(out), **{**TINY, **overrides})


def test_train_logs_checkpoints_and_exports(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_training(tiny_config(tiny_dataset, out))

    assert result.epochs_run == 2
    assert 0.0 < result.threshold["threshold"] < 1.0
    assert result.threshold["rule"] == "target-fpr"
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    model, spec, threshold = load_export(out / "export")
    assert spec.image_size == 75 and spec.mean == (0.5, 0.5, 0.5)
    assert threshold == result.threshold
    logits = model(torch.zeros(3, 3, 75, 75))
    assert logits.shape == (3, 1)

    mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}")
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["weights"] == "none"
    for name in ("train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_roc_auc"):
        assert len(client.get_metric_history(result.run_id, name)) == 2, name
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/pr_curve.png"} <= artifacts
    exported = {a.path for a in client.list_artifacts(result.run_id, "export")}
    assert "export/model.pt" in exported and "export/threshold.json" in exported
    report = json.loads((out / "reports" / "metrics.json").read_text())
    assert report["threshold"]["rule"] == "target-fpr"


def test_resume_continues_the_same_run(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_training(tiny_config(tiny_dataset, out, epochs=1, export=False))
    resumed = run_training(tiny_config(tiny_dataset, out, epochs=2, resume=True, export=False))
    assert resumed.run_id == first.run_id
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    with pytest.raises(ValueError, match="image_size"):
        run_training(tiny_config(tiny_dataset, out, epochs=3, resume=True, image_size=80, export=False))


@pytest.mark.parametrize(("dtype", "weight_tol", "loss_tol"), [("float32", 1e-4, 1e-5), ("float16", 1e-2, 1e-3)])
def test_cached_and_uncached_training_agree(
    tiny_dataset: Path, tmp_path: Path, dtype: str, weight_tol: float, loss_tol: float
) -> None:
    """A float32 store trains exactly as pixels do; the float16 default within its rounding."""
    cached = run_training(tiny_config(tiny_dataset, tmp_path / "a", cache=True, cache_dtype=dtype, export=False))
    plain = run_training(tiny_config(tiny_dataset, tmp_path / "b", cache=False, export=False))
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model"]
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < weight_tol, worst
    assert cached.history[-1]["train_loss"] == pytest.approx(plain.history[-1]["train_loss"], abs=loss_tol)
    assert list((tmp_path / "a" / "cache").glob("*/*.npy"))


def test_unreadable_files_are_skipped_and_listed(tiny_dataset: Path, tmp_path: Path) -> None:
    (tiny_dataset / "train" / "positive" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tiny_dataset / "train" / "negative" / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    run_training(tiny_config(tiny_dataset, out, epochs=1, head_epochs=1, export=False))
    report = (out / "reports" / "skipped.csv").read_text()
    assert "broken.jpg" in report and "notes.txt" in report


def test_cli_reports_bad_options_clearly(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["train", "--data", str(tiny_dataset), "--output", str(tmp_path / "o"), "--weights", "nope"])
    assert code == 2
    assert "nope" in capsys.readouterr().err
    code = cli_main(["train", "--data", str(tmp_path / "missing")])
    assert code == 2
    assert "missing" in capsys.readouterr().err
    code = cli_main(["train", "--data", str(tiny_dataset), "--epochs", "0"])
    assert code == 2
    assert "--epochs 0" in capsys.readouterr().err


def test_overlay_marks_ignore_fonts_outside_the_declared_set(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A font installed by something else (Chromium's packages bring Liberation) changes
    no byte of the synthetic training marks, so not the model either."""
    from train.overlay import add_overlay_pairs
    from train.splits import load_splits
    from train.synth import fonts

    splits = load_splits(tiny_dataset, val_fraction=0.2, seed=0)
    before = add_overlay_pairs(splits.train, tmp_path / "a", copies=2, seed=0)
    extra = tmp_path / "extra-fonts"
    extra.mkdir()
    bundled = fonts.bundled_font_dir()
    assert bundled is not None
    for path in bundled.glob("*.ttf"):  # other families and more files of the known ones
        (extra / f"Extra{path.name}").write_bytes(path.read_bytes())
    monkeypatch.setenv(fonts.FONT_DIRS_ENV, str(extra))
    fonts.pin_font_files(None)  # forget the fonts found so far, as a new process would
    assert {p.name for p in fonts.font_candidates()} >= {"ExtraDejaVuSans.ttf", "ExtraSTIXGeneral.ttf"}  # discovery sees them
    after = add_overlay_pairs(splits.train, tmp_path / "b", copies=2, seed=0)
    assert [s.path.read_bytes() for s in after] == [s.path.read_bytes() for s in before]


def test_overlay_keeps_declared_pairs_and_a_lossless_history(tmp_path: Path) -> None:
    """A declared pair's key is kept (dataset positive, original and marks batch together);
    a PNG original's marks are lossless PNGs, not a JPEG generation the original never had."""
    from PIL import Image

    from train.data import Sample
    from train.overlay import add_overlay_pairs

    photo = Image.effect_noise((160, 120), 40).convert("RGB")
    jpeg, png, marked = tmp_path / "n.jpg", tmp_path / "m.png", tmp_path / "p.jpg"
    photo.save(jpeg, quality=90)
    photo.save(png)
    photo.save(marked, quality=90)
    samples = [Sample(marked, 1, group="g1", pair="pairs.csv:1"), Sample(jpeg, 0, group="g1", pair="pairs.csv:1"),
               Sample(png, 0, group="g2")]  # fmt: skip
    out = add_overlay_pairs(samples, tmp_path / "ov", copies=1, seed=3)
    made = out[3:]
    assert out[:3][:2] == samples[:2] and out[2].path == png and out[2].pair
    assert [s.pair for s in made] == ["pairs.csv:1", out[2].pair]
    assert [s.path.suffix for s in made] == [".jpg", ".png"]
    with Image.open(made[1].path) as image:
        assert image.format == "PNG" and image.size == photo.size


def test_overlay_negatives_pairs_training_styles_with_same_jpeg_history(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from PIL import Image

    from train import synth
    from train.splits import load_splits
    from train.overlay import add_overlay_pairs

    splits = load_splits(tiny_dataset, val_fraction=0.2, seed=0)
    calls: list[dict] = []
    real_render = synth.render_watermark

    def spy(image, rng, **kwargs):
        calls.append(kwargs)
        return real_render(image, rng, **kwargs)

    monkeypatch.setattr(synth, "render_watermark", spy)
    result = add_overlay_pairs(splits.train, tmp_path / "ov", copies=2, seed=0)
    negatives = [s for s in splits.train if s.label == 0]
    made = [s for s in result if s.label == 1 and s not in splits.train]
    kept = [s for s in result if s.label == 0]
    assert len(made) == 2 * len(negatives) and [s.path for s in kept] == [s.path for s in negatives]  # originals stay
    assert all(c["split"] == "train" and c["jpeg_prob"] == 0 for c in calls) and calls
    for clean in kept:
        partners = [s for s in made if s.pair == clean.pair]
        assert clean.pair and len(partners) == 2 and {s.group for s in partners} == {clean.group}
        with Image.open(clean.path) as a, Image.open(partners[0].path) as b:
            # the original's own JPEG tables and subsampling: re-encoding is no shortcut
            assert b.format == "JPEG" and a.quantization == b.quantization
            assert b.layer == a.layer  # type: ignore[attr-defined]  # same chroma subsampling
            diff = np.abs(np.asarray(a.convert("L"), dtype=int) - np.asarray(b.convert("L"), dtype=int))
        assert (diff > 24).mean() < 0.5  # the mark changes part of the photo, not all of it
        assert np.median(diff) <= 1  # and the rest only by rounding
    again = add_overlay_pairs(splits.train, tmp_path / "ov", copies=2, seed=0)
    assert [s.path for s in again] == [s.path for s in result]  # reused, deterministic
    half = add_overlay_pairs(splits.train, tmp_path / "ov2", copies=0.5, seed=0)
    assert 0 < sum(s.label == 1 and s not in splits.train for s in half) < len(negatives)
    with pytest.raises(ValueError, match="overlay-negatives -1"):
        add_overlay_pairs(splits.train, tmp_path / "ov", copies=-1, seed=0)

    out = tmp_path / "out"
    run_training(tiny_config(tiny_dataset, out, epochs=1, overlay_negatives=1, export=False))
    counts = json.loads((out / "reports" / "metrics.json").read_text())["counts"]
    assert counts["train_positive"] == 2 * counts["train_negative"]


def test_cosine_schedule_decays_to_zero_and_constant_stays() -> None:
    from train.steps import lr_factor

    assert lr_factor("cosine", 0.0) == pytest.approx(1.0) and lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("constant", 0.7) == 1.0


def test_runtime_options_are_checked_at_the_edge(tiny_dataset: Path, tmp_path: Path) -> None:
    from train.model import Runtime

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: CUDA is not available on this machine; use --device cpu"):
            tiny_config(tiny_dataset, tmp_path, device="cuda").validate()
    with pytest.raises(ValueError, match="--amp fp16 needs --device cuda"):
        Runtime(amp="fp16")
    with pytest.raises(ValueError, match="--amp 'int4': allowed are none, bf16, fp16"):
        Runtime(amp="int4")
    with pytest.raises(ValueError, match="--device 'tpu'"):
        Runtime(device="tpu")
    with pytest.raises(ValueError, match="--lr-schedule 'linear'"):
        tiny_config(tiny_dataset, tmp_path, lr_schedule="linear").validate()
    with pytest.raises(ValueError, match="--cache-dtype 'int8'"):
        tiny_config(tiny_dataset, tmp_path, cache_dtype="int8").validate()
    with pytest.raises(ValueError, match="--holdout-curve .* needs --holdout-fraction > 0"):
        tiny_config(tiny_dataset, tmp_path, holdout_curve=True).validate()
    with pytest.raises(ValueError, match="--last-block 'Mixed_5b': allowed are Mixed_6e, Mixed_7a, Mixed_7b, Mixed_7c"):
        tiny_config(tiny_dataset, tmp_path, last_block="Mixed_5b").validate()


def test_a_head_on_mixed_6e_trains_and_exports_without_the_mixed_7_blocks(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_training(tiny_config(tiny_dataset, out, last_block="Mixed_6e", epochs=1))
    model, spec, _ = load_export(out / "export")
    info = json.loads((out / "export" / "model_info.json").read_text())
    assert info["config"]["last_block"] == "Mixed_6e"
    names = [name for name, _ in model.named_parameters()]
    assert names and not [n for n in names if "Mixed_7" in n]
    assert model(torch.zeros(1, 3, spec.image_size, spec.image_size)).shape == (1, 1)


def test_bf16_cosine_run_trains_and_exports_an_fp32_model(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_training(tiny_config(tiny_dataset, out, amp="bf16", lr_schedule="cosine", epochs=2, head_epochs=0))
    model, spec, _ = load_export(out / "export")
    logits = model(torch.zeros(2, 3, spec.image_size, spec.image_size))
    assert logits.dtype == torch.float32 and logits.shape == (2, 1)
    assert result.epochs_run == 2
    report = json.loads((out / "reports" / "metrics.json").read_text())
    assert report["peak_rss_mb"] > 0 and report["seconds"]["cache"] >= 0


def test_holdout_curve_is_reported_and_never_changes_the_run(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", pairs=16)
    options = dict(holdout_fraction=0.25, export=False, save_checkpoints=False, seed=3)
    plain = run_training(tiny_config(data, tmp_path / "plain", **options))
    curve = run_training(tiny_config(data, tmp_path / "curve", holdout_curve=True, **options))

    assert curve.threshold == plain.threshold and curve.best_score == plain.best_score
    for a, b in zip(plain.history, curve.history):
        assert {k: v for k, v in a.items() if k.startswith("val_")} == {k: v for k, v in b.items() if k.startswith("val_")}
        assert not any(k.startswith("holdout_") for k in a)
        assert 0.0 <= b["holdout_f1"] <= 1.0 and 0.0 <= b["holdout_fpr"] <= 1.0
        assert b["elapsed_seconds"] > 0
    assert curve.history[1]["elapsed_seconds"] > curve.history[0]["elapsed_seconds"]


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.json")), ids=lambda p: p.name)
def test_every_recipe_is_a_valid_training_config(recipe: Path) -> None:
    """make demo, make train-real and the quality benchmark pass these files as --config."""
    from train.config import load_config_file

    config = TrainConfig.from_dict({**load_config_file(recipe), "data": "DATA"})
    assert config.data == "DATA"
