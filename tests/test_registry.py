"""MLflow model registry: real training runs register versions (MLflow pyfunc models of the
export), aliases move, the archive is built from ``models:/watermark@champion`` and a real
TorchServe serves it. tests/test_mlflow_model.py covers old bare-bundle versions and
``mlflow models serve``."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests import serving_fixtures as sf
from tests.test_training import tiny_config
from tests.ts_server import create_mar, put_image, serve
from train import registry
from train.cli import main as cli_main
from train.io import default_tracking_uri
from train.training import run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """Two registered versions of one model, trained for real on a tiny dataset."""
    from tests.conftest import write_dataset

    root = tmp_path_factory.mktemp("registry")
    data = write_dataset(root / "data", pairs=10)
    out = root / "out"
    first = run_training(tiny_config(data, out, epochs=1, register=True))
    second = run_training(tiny_config(data, out, epochs=1, register=True, seed=1, lr=3e-3))
    return {"root": root, "out": out, "uri": default_tracking_uri(out), "runs": (first, second)}


def test_first_version_is_champion_then_challenger(store) -> None:
    first, second = store["runs"]
    assert (first.registered_version, second.registered_version) == ("1", "2")
    versions = {v.version: v for v in registry.list_versions(store["uri"], "watermark")}
    assert versions["1"].aliases == ["champion"] and versions["2"].aliases == ["challenger"]
    assert versions["1"].run_id == first.run_id and versions["1"].kind == "pyfunc"
    assert versions["1"].source == f"models:/{versions['1'].model_id}" and versions["1"].model_id.startswith("m-")
    assert float(versions["2"].tags["threshold"]) == pytest.approx(second.threshold["threshold"])
    assert versions["2"].tags["image_size"] == "75"


def test_training_registers_an_mlflow_model_that_answers_like_its_bundle(store, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    first = store["runs"][0]
    mlflow.set_tracking_uri(store["uri"])
    mlflow.set_registry_uri(store["uri"])
    info = mlflow.models.get_model_info("models:/watermark/1")
    assert info.run_id == first.run_id and info.signature is not None and info.saved_input_example_info is not None
    assert info.metadata["threshold"]["threshold"] == pytest.approx(first.threshold["threshold"])
    assert info.metadata["preprocess"]["image_size"] == 75
    bundle = tmp_path / "bundle"
    registry.fetch(store["uri"], "models:/watermark/1", bundle)
    images = [sf.jpeg_bytes(seed=3), sf.png_bytes(seed=4), b"not an image"]
    out = mlflow.pyfunc.load_model("models:/watermark/1").predict(pd.DataFrame({"image": images}))
    for row, image in enumerate(images[:2]):
        expected = sf.expected_probability(bundle, image)
        assert out["probability"][row] == pytest.approx(expected, abs=1e-5)
        assert out["watermark"][row] is (expected >= first.threshold["threshold"])
    assert out["status"].tolist() == [200, 200, 400] and out["error"][2].startswith("row 2: not a decodable image")


def test_promote_moves_champion_and_keeps_previous(store, tmp_path: Path) -> None:
    uri = store["uri"]
    registry.promote(uri, "watermark", "2")
    assert registry.resolve(uri, "models:/watermark@champion").version == "2"
    assert registry.resolve(uri, "models:/watermark@previous").version == "1"
    with pytest.raises(registry.RegistryError, match="no such alias"):
        registry.resolve(uri, "models:/watermark@challenger")  # promoted, so no longer a challenger

    fetched = registry.fetch(uri, "models:/watermark@champion", tmp_path / "bundle")
    info = json.loads((tmp_path / "bundle" / "model_info.json").read_text())
    assert fetched.version == "2" and info["registry"]["version"] == "2"
    assert info["mlflow_run_id"] == store["runs"][1].run_id
    with pytest.raises(FileExistsError, match="--overwrite"):
        registry.fetch(uri, "models:/watermark@champion", tmp_path / "bundle")

    # Rollback is one promotion of the previous version.
    code = cli_main(["registry", "promote", "--version", "1", "--tracking-uri", uri])
    assert code == 0
    assert registry.resolve(uri, "models:/watermark@champion").version == "1"
    assert registry.resolve(uri, "models:/watermark@previous").version == "2"
    registry.promote(uri, "watermark", "2")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/watermark@nope", "no such alias; versions are 2@champion, 1@previous"),
        ("models:/watermark/9", "no such version"),
        ("models:/other@champion", "registered model 'other' does not exist"),
        ("runs:/abc/export", "allowed forms are models:/NAME@ALIAS"),
    ],
)
def test_bad_model_uri_is_a_clear_error(store, uri: str, message: str, capsys) -> None:
    registry.promote(store["uri"], "watermark", "2")
    code = cli_main(["registry", "fetch", "--uri", uri, "--out", str(store["root"] / "never"), "--tracking-uri", store["uri"]])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (store["root"] / "never").exists()


def test_missing_store_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code = cli_main(["registry", "list", "--output", str(tmp_path / "nothing")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no MLflow store" in err and "--register" in err
    assert not (tmp_path / "nothing").exists()


def test_register_without_export_is_rejected(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--register needs the export"):
        run_training(tiny_config(tiny_dataset, tmp_path / "out", register=True, export=False))


def test_archive_from_champion_has_the_registry_version_and_serves(store, tmp_path_factory) -> None:
    registry.promote(store["uri"], "watermark", "2")
    bundle = store["root"] / "champion-export"
    registry.fetch(store["uri"], "models:/watermark/2", bundle, overwrite=True)
    image = sf.jpeg_bytes(seed=3)
    expected = sf.expected_probability(bundle, image)

    def setup(srv):
        mismatch = create_mar(
            "--from-registry", "models:/watermark@champion", "--tracking-uri", store["uri"], "--version", "7",
            "--model-store", str(srv.store),
        )
        assert mismatch.returncode != 0 and "differs from the registry version 2" in mismatch.stderr
        built = create_mar(
            "--from-registry", "models:/watermark@champion", "--tracking-uri", store["uri"], "--model-store", str(srv.store)
        )
        assert built.returncode == 0, built.stderr
        assert "registry version 2" in built.stdout
        assert sorted(p.name for p in srv.store.iterdir()) == ["watermark.mar"]  # no staging folders left
        with zipfile.ZipFile(srv.store / "watermark.mar") as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
            info = json.loads(mar.read("model_info.json"))
        assert manifest["model"]["modelVersion"] == "2"
        assert info["registry"] == {**info["registry"], "version": "2", "uri": "models:/watermark@champion"}

    gen = serve(tmp_path_factory.mktemp("ts-registry"), setup)
    srv = next(gen)
    try:
        response = put_image(srv, image)
        assert response.status_code == 200, response.text
        assert response.json()["probability"] == pytest.approx(expected, abs=2e-6)
        assert srv.describe()["modelVersion"] == "2"
    finally:
        gen.close()
