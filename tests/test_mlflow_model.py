"""Registry versions as MLflow pyfunc models, against a real MLflow store, a real
``mlflow models serve`` and a real TorchServe, on tiny exports.

One store for the module (an SQLite file and an artifact folder under a temporary root):

* version 1: export A registered the old way (source ``runs:/RUN_A/export``, a bare bundle);
* version 2: the same run registered again by ``python -m train registry register --run-id``
  (an MLflow model of the same bundle: what an old version is upgraded to);
* version 3: export B (other weights and threshold) registered while its run is active, as
  training does; promoted to ``champion``.

TorchServe serves archives that ``create_mar.sh --from-registry`` built from version 1 (old)
and from ``models:/watermark@champion`` (version 3, new); ``mlflow models serve`` serves
``models:/watermark@champion``. Both servers bind to 127.0.0.1 and are stopped by the
fixtures, with bounded timeouts throughout.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests

from tests import serving_fixtures as sf
from tests.processes import group_alive, stop_group
from tests.ts_server import REPO, TIMEOUT, VENV_BIN, create_mar, put_image, serve
from train import registry
from train.cli import main as cli_main

pytestmark = pytest.mark.integration

MLFLOW = str(VENV_BIN / "mlflow")
READY_TIMEOUT = 90
PROB_TOL = 1e-5
GOOD = {f"jpeg{seed}": sf.jpeg_bytes(seed=seed) for seed in range(1, 5)} | {"png": sf.png_bytes(seed=5)}
BAD = {"text": (b"not an image at all", 400), "pdf": (b"%PDF-1.4\n" + b"0" * 64, 415)}


def _set_threshold_between(export: Path) -> float:
    """Rewrite threshold.json so that the GOOD images get both verdicts (a threshold halfway
    across the widest gap between their probabilities)."""
    probs = sorted(sf.expected_probability(export, data) for data in GOOD.values())
    low, high = max(zip(probs, probs[1:]), key=lambda pair: pair[1] - pair[0])
    threshold = round((low + high) / 2, 6)
    assert min(abs(p - threshold) for p in probs) > 10 * PROB_TOL, probs  # the verdicts are not a rounding matter
    (export / "threshold.json").write_text(json.dumps({"threshold": threshold, "rule": "test-midpoint"}), encoding="utf-8")
    return threshold


def _register_the_old_way(client, run_id: str) -> str:
    """What train --register did before versions were MLflow models: the bare export folder."""
    client.create_registered_model("watermark")
    mv = client.create_model_version(
        "watermark", source=f"runs:/{run_id}/export", run_id=run_id, tags={"threshold": "old", "image_size": "75"}
    )
    client.set_registered_model_alias("watermark", registry.CHAMPION, mv.version)
    return str(mv.version)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mlflow-model")
    exports = {"A": sf.build_tiny_export(root / "export-A", seed=0), "B": sf.build_tiny_export(root / "export-B", seed=1)}
    thresholds = {name: _set_threshold_between(path) for name, path in exports.items()}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("watermark", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run_a:
        mlflow.log_artifacts(str(exports["A"]), "export")
    started = time.monotonic()
    versions = {"1": _register_the_old_way(client, run_a.info.run_id)}
    assert cli_main(["registry", "register", "--run-id", run_a.info.run_id, "--tracking-uri", uri]) == 0
    versions["2"] = registry.resolve(uri, "models:/watermark@challenger").version
    with mlflow.start_run(experiment_id=experiment) as run_b:  # as training: the run is active
        mlflow.log_artifacts(str(exports["B"]), "export")
        versions["3"] = registry.register_run_export(uri, run_b.info.run_id).version
    seconds = time.monotonic() - started
    assert versions == {"1": "1", "2": "2", "3": "3"}
    after_registration = {v.version: v.aliases for v in registry.list_versions(uri)}
    registry.promote(uri, "watermark", "3")
    return {
        "root": root, "uri": uri, "exports": exports, "thresholds": thresholds, "runs": {"A": run_a.info.run_id, "B": run_b.info.run_id},
        "aliases_after_registration": after_registration, "register_seconds": seconds,
    }


def test_versions_are_pyfunc_models_except_the_old_one(store, capsys) -> None:
    uri, runs = store["uri"], store["runs"]
    # The first version is the champion, every later one the challenger (until promoted).
    assert store["aliases_after_registration"] == {"1": ["champion"], "2": [], "3": ["challenger"]}
    versions = {v.version: v for v in registry.list_versions(uri)}
    assert versions["1"].source == f"runs:/{runs['A']}/export" and versions["1"].kind == "bundle" and versions["1"].model_id is None
    for number, run in (("2", "A"), ("3", "B")):
        v = versions[number]
        assert v.kind == "pyfunc" and v.source == f"models:/{v.model_id}" and v.run_id == runs[run]
        assert v.tags == {**v.tags, "threshold": str(store["thresholds"][run]), "image_size": "75", "resize": "squash"}
    assert versions["3"].aliases == ["champion"] and versions["1"].aliases == ["previous"]
    assert cli_main(["registry", "list", "--tracking-uri", uri]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[-2] for line in listed[1:]] == ["pyfunc", "pyfunc", "bundle"]
    # The model is an output of the run that logged it, in that run's experiment (not ./mlruns).
    client = mlflow.MlflowClient(uri)
    assert versions["3"].model_id in {m.model_id for m in client.get_run(runs["B"]).outputs.model_outputs}
    for number in ("2", "3"):  # registered with and without an active run
        location = client.get_logged_model(versions[number].model_id).artifact_location
        assert location.startswith((store["root"] / "artifacts" / "models").as_uri()), location


def test_logged_model_has_signature_example_metadata_and_its_own_code(store, tmp_path: Path) -> None:
    info = mlflow.models.get_model_info("models:/watermark@champion")
    assert info.signature.inputs.to_dict() == [{"type": "binary", "name": "image", "required": True}]
    assert [(c["name"], c["type"], c["required"]) for c in info.signature.outputs.to_dict()] == [
        ("probability", "double", False), ("threshold", "double", True), ("watermark", "boolean", False),
        ("error", "string", False), ("status", "long", True),
    ]
    assert info.saved_input_example_info["type"] == "dataframe"
    assert info.metadata["threshold"]["threshold"] == store["thresholds"]["B"]
    assert info.metadata["preprocess"] == json.loads((store["exports"]["B"] / "preprocess.json").read_text())
    flavor = info.flavors["python_function"]
    assert flavor["loader_module"] == "watermark_pyfunc.mlflow_pyfunc" and flavor["data"] == "data/export"

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/watermark/3", dst_path=str(tmp_path)))
    code = local / "code" / "watermark_pyfunc"
    assert sorted(p.name for p in code.iterdir()) == ["__init__.py", "mlflow_pyfunc.py", "preprocess.py"]
    assert (code / "preprocess.py").read_bytes() == (REPO / "handler" / "preprocess.py").read_bytes()
    example = mlflow.models.Model.load(str(local / "MLmodel")).load_input_example(str(local))
    assert list(example.columns) == ["image"] and isinstance(example["image"][0], bytes)
    assert "torch==" in (local / "requirements.txt").read_text()


def test_fetch_gives_the_bare_bundle_for_old_and_new_versions(store, tmp_path: Path) -> None:
    uri, export_a = store["uri"], store["exports"]["A"]
    for number, kind in (("1", "bundle"), ("2", "pyfunc")):
        out = tmp_path / f"v{number}"
        assert cli_main(["registry", "fetch", "--uri", f"models:/watermark/{number}", "--out", str(out), "--tracking-uri", uri]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["model.pt", "model_info.json", "preprocess.json", "threshold.json"]
        for name in ("model.pt", "preprocess.json", "threshold.json"):
            assert (out / name).read_bytes() == (export_a / name).read_bytes(), (number, name)
        entry = json.loads((out / "model_info.json").read_text())["registry"]
        assert entry["version"] == number and entry["kind"] == kind and entry["run_id"] == store["runs"]["A"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_pyfunc_answers_like_the_shared_preprocessing_with_per_item_errors(store) -> None:
    bodies = [GOOD["jpeg1"], BAD["text"][0], GOOD["png"], "not bytes", b"", BAD["pdf"][0], GOOD["jpeg2"]]
    for number, export in (("2", "A"), ("3", "B")):
        model = mlflow.pyfunc.load_model(f"models:/watermark/{number}")
        out = model.predict(pd.DataFrame({"image": bodies}))
        assert list(out.columns) == ["probability", "threshold", "watermark", "error", "status"] and len(out) == len(bodies)
        threshold = store["thresholds"][export]
        assert (out["threshold"] == threshold).all()
        for row, body in enumerate(bodies):
            answer = out.iloc[row]
            if row in (0, 2, 6):
                expected = sf.expected_probability(store["exports"][export], body)
                assert answer["probability"] == pytest.approx(expected, abs=PROB_TOL)
                assert answer["watermark"] is (expected >= threshold) and answer["error"] is None and answer["status"] == 200
            else:
                assert answer["probability"] is None and answer["watermark"] is None and answer["error"].startswith(f"row {row}: ")
        assert out["status"].tolist() == [200, 400, 200, 400, 400, 415, 200]
        assert "expected the image's bytes" in out["error"][3] and "empty" in out["error"][4]


def test_broken_registrations_are_clear_errors(store, tmp_path: Path) -> None:
    uri = store["uri"]
    with pytest.raises(registry.RegistryError, match="no such version"):
        registry.fetch(uri, "models:/watermark/9", tmp_path / "never")
    lacking = sf.build_tiny_export(tmp_path / "lacking")
    (lacking / "threshold.json").unlink()
    broken = sf.build_tiny_export(tmp_path / "broken")
    (broken / "model.pt").write_bytes(b"not torchscript")
    experiment = mlflow.get_experiment_by_name("watermark").experiment_id
    for folder, message in ((lacking, r"lacks \['threshold.json'\]"), (broken, "the pyfunc cannot load or score its bundle")):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifacts(str(folder), "export")
        with pytest.raises(registry.RegistryError, match=message):
            registry.register_run_export(uri, run.info.run_id)
    assert [v.version for v in registry.list_versions(uri)] == ["3", "2", "1"]  # nothing half-registered
    assert cli_main(["registry", "register", "--tracking-uri", uri]) == 2
    foreign = tmp_path / "foreign"  # an MLflow model that is not one of ours: no bundle to fetch
    foreign.mkdir()
    mlflow.models.Model(flavors={"python_function": {"loader_module": "something"}}).save(str(foreign / "MLmodel"))
    with pytest.raises(registry.RegistryError, match="an MLflow model without the bundle folder"):
        registry.bundle_folder(foreign, "models:/other/1")


# ------------------------------------------------------------------ real servers
def _request_body(bodies: list[bytes]) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b).decode("ascii")] for b in bodies]}}


class MlflowServer:
    """``mlflow models serve -m URI --env-manager local`` on a free loopback port, in its own
    process group (the CLI starts uvicorn as a child), stopped with SIGTERM then SIGKILL."""

    def __init__(self, root: Path, tracking_uri: str, model_uri: str) -> None:
        self.root, self.port = root, sf.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-serve.log"
        env = {
            **os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {self.proc.returncode}\n{self.log.read_text(errors='replace')[-4000:]}")
            try:
                if requests.get(f"{self.url}/ping", timeout=(2, 5)).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        pytest.fail(f"mlflow models serve not ready after {timeout}s\n{self.log.read_text(errors='replace')[-4000:]}")

    def invoke(self, bodies: list[bytes]) -> requests.Response:
        return requests.post(f"{self.url}/invocations", json=_request_body(bodies), timeout=TIMEOUT)

    def stop(self) -> None:
        stop_group(self.proc)
        assert not group_alive(self.proc), "mlflow models serve left processes behind"


@pytest.fixture(scope="module")
def mlflow_server(store):
    server = MlflowServer(store["root"], store["uri"], "models:/watermark@champion")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def torchserve(store, tmp_path_factory):
    """watermark.mar from version 1 (old, bare bundle) loaded at start; watermark-v3.mar from
    models:/watermark@champion (version 3, an MLflow model) registered through the management API."""
    common = ("--tracking-uri", store["uri"])

    def setup(srv) -> None:
        old = create_mar("--from-registry", "models:/watermark/1", "--model-store", str(srv.store), *common)
        new = create_mar("--from-registry", "models:/watermark@champion", "--versioned", "--model-store", str(srv.store), *common)
        assert old.returncode == 0 and new.returncode == 0, old.stderr + new.stderr
        assert "registry version 1" in old.stdout and "registry version 3" in new.stdout
        assert sorted(p.name for p in srv.store.iterdir()) == ["watermark-v3.mar", "watermark.mar"]

    gen = serve(tmp_path_factory.mktemp("ts-mlflow-model"), setup)
    srv = next(gen)
    try:
        added = requests.post(
            f"{srv.management}/models", params={"url": "watermark-v3.mar", "initial_workers": "1", "synchronous": "true"},
            headers=srv.auth("management"), timeout=(5, 90),
        )
        assert added.status_code == 200, added.text
        yield srv
    finally:
        gen.close()


def test_archives_from_old_and_new_versions_hold_the_same_kind_of_bundle(store, torchserve) -> None:
    for archive, export, version in (("watermark.mar", "A", "1"), ("watermark-v3.mar", "B", "3")):
        with zipfile.ZipFile(torchserve.store / archive) as mar:
            names = set(mar.namelist())
            assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == version
            assert mar.read("model.pt") == (store["exports"][export] / "model.pt").read_bytes()
            assert json.loads(mar.read("threshold.json"))["threshold"] == store["thresholds"][export]
            assert json.loads(mar.read("model_info.json"))["registry"]["version"] == version
        # create_mar.sh packs the TorchServe files only: no MLflow model files, no pyfunc module.
        assert not {"mlflow_pyfunc.py", "MLmodel"} & {n.rsplit("/", 1)[-1] for n in names}, names


def test_mlflow_serve_and_torchserve_give_the_same_answers(store, torchserve, mlflow_server) -> None:
    bodies = [*GOOD.values(), *(body for body, _status in BAD.values())]
    response = mlflow_server.invoke(bodies)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    assert len(served) == len(bodies)
    local = mlflow.pyfunc.load_model("models:/watermark@champion").predict(pd.DataFrame({"image": bodies}))
    for row, body in enumerate(bodies):
        ts = put_image(torchserve, body, url=f"{torchserve.predict_url}/3")
        answer = served[row]
        if row < len(GOOD):
            assert ts.status_code == 200, ts.text
            expected = ts.json()
            assert expected["version"] == "3"
            assert answer["watermark"] is expected["watermark"] is bool(local["watermark"][row])
            assert answer["probability"] == pytest.approx(expected["probability"], abs=PROB_TOL)
            assert local["probability"][row] == pytest.approx(expected["probability"], abs=PROB_TOL)
            assert answer["threshold"] == expected["threshold"] == store["thresholds"]["B"] and answer["error"] is None
        else:  # the same per-item status as TorchServe's, and a null verdict
            assert answer["status"] == ts.status_code == ts.json()["status"] == local["status"][row], (answer, ts.text)
            assert answer["probability"] is None and answer["watermark"] is None and answer["error"]
    verdicts = [a["watermark"] for a in served[: len(GOOD)]]
    assert True in verdicts and False in verdicts  # both verdicts were compared


def test_torchserve_of_the_old_version_answers_like_its_upgraded_pyfunc(store, torchserve) -> None:
    """Version 1 (bare bundle, served by TorchServe) and version 2 (the same run registered
    again as an MLflow model, loaded as a pyfunc) give the same verdicts."""
    bodies = list(GOOD.values())
    local = mlflow.pyfunc.load_model("models:/watermark/2").predict(pd.DataFrame({"image": bodies}))
    for row, body in enumerate(bodies):
        ts = put_image(torchserve, body, url=f"{torchserve.predict_url}/1")
        assert ts.status_code == 200, ts.text
        assert ts.json()["version"] == "1" and ts.json()["watermark"] is bool(local["watermark"][row])
        assert local["probability"][row] == pytest.approx(ts.json()["probability"], abs=PROB_TOL)


def test_bad_base64_is_refused_by_mlflow_before_the_model(mlflow_server) -> None:
    response = requests.post(
        f"{mlflow_server.url}/invocations", json={"dataframe_records": [{"image": "abcde"}]}, timeout=TIMEOUT
    )
    assert response.status_code == 400 and "base64" in response.text
    assert mlflow_server.invoke([GOOD["jpeg1"]]).status_code == 200  # and the server goes on
