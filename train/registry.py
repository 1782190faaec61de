"""MLflow model registry: versions of the export bundle, and aliases that say which is live.

A registered version is an MLflow ``pyfunc`` model logged with the training run
(:func:`log_bundle_model`): the run's ``export/`` bundle (TorchScript, preprocessing spec,
threshold, provenance) is the model's ``data/export`` folder, and ``handler/mlflow_pyfunc.py``
with ``handler/preprocess.py`` its code, so ``mlflow models serve -m models:/NAME@ALIAS`` and
``mlflow.pyfunc.load_model`` answer verdicts as TorchServe does; the signature, an input
example and the spec and threshold (as model metadata) are logged with it. Versions
registered before that have the bare folder ``runs:/RUN/export`` as their source; both kinds
are fetched as the bare bundle (:func:`fetch`) for ``scripts/create_mar.sh --from-registry``.
Aliases replace the stages MLflow deprecated in 2.9:

* ``champion``: the version that is served (``scripts/create_mar.sh --from-registry``);
* ``challenger``: the newest candidate, set on every registration after the first;
* ``previous``: the champion before the last promotion, for a one-step rollback.

The first version of a model becomes the champion, because nothing is live yet; later
versions become the challenger and are promoted explicitly
(``python -m train registry promote``).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import Any

from train.io import sqlite_path, swap_folder, write_json_atomic

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
EXPORT_ARTIFACT_PATH = "export"
BUNDLE_FILES = ("model.pt", "preprocess.json", "threshold.json")
# Inside a logged model: the code package (code/PYFUNC_PACKAGE) and MLflow's loader hook.
PYFUNC_PACKAGE = "watermark_pyfunc"
PYFUNC_LOADER = f"{PYFUNC_PACKAGE}.mlflow_pyfunc"
PYFUNC_CODE = ("mlflow_pyfunc.py", "preprocess.py")  # from handler/; nothing else is imported
PYFUNC_FLAVOR = "python_function"
# What the model needs to load, pinned to the versions that logged it.
MODEL_REQUIREMENTS = ("mlflow", "torch", "pillow", "numpy", "pandas")
_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))$")
_LOGGED_MODEL = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class RegistryError(ValueError):
    """A registry request that cannot be met; the message says what to do."""


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str | None
    source: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None  # the logged MLflow model; None for a bare-bundle version

    @property
    def kind(self) -> str:
        """``pyfunc`` (an MLflow model) or ``bundle`` (a bare ``runs:/RUN/export`` folder)."""
        return "pyfunc" if self.model_id or self.source.startswith("models:/") else "bundle"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind}


def _client(tracking_uri: str):
    import os

    from mlflow import MlflowClient

    # Bundles are a few files: MLflow's download progress bars would only be noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if (db := sqlite_path(tracking_uri)) is not None:
        if not db.is_file():
            raise RegistryError(
                f"--tracking-uri {tracking_uri}: no MLflow store at {db}; train with --register first "
                "(python -m train train --register ...)"
            )
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _to_version(mv: Any) -> RegisteredVersion:
    return RegisteredVersion(
        name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source,
        aliases=sorted(getattr(mv, "aliases", []) or []), tags=dict(mv.tags or {}),
        model_id=getattr(mv, "model_id", None) or _model_id_of(mv.source),
    )


def _model_id_of(source: str) -> str | None:
    """``m-...`` of a ``models:/m-...`` source (the registry may not store the version's model id)."""
    match = _LOGGED_MODEL.match(source or "")
    return match["id"] if match else None


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    match = _URI.match(uri)
    if not match:
        raise RegistryError(f"model URI {uri!r}: allowed forms are models:/NAME@ALIAS (e.g. models:/watermark@champion) or models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def _existing_model(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def register_run_export(
    tracking_uri: str, run_id: str, *, name: str = "watermark", artifact_path: str = EXPORT_ARTIFACT_PATH, description: str = ""
) -> RegisteredVersion:
    """Log the run's ``export/`` bundle as an MLflow pyfunc model and register it as a new
    version of ``name``; the first version becomes ``champion``, later ones ``challenger``.

    Tags carry the threshold and image size of the bundle so ``registry list`` shows them.
    The run may be the active run of a training or a finished one (an older run whose
    version was a bare bundle: registering it again makes an MLflow model of it).
    """
    client = _client(tracking_uri)
    files = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, artifact_path)}
    missing = [f for f in BUNDLE_FILES if f not in files]
    if missing:
        raise RegistryError(f"run {run_id}: artifact folder {artifact_path}/ lacks {missing}; only exported runs can be registered")
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        bundle = Path(client.download_artifacts(run_id, artifact_path, tmp))
        tags = _bundle_tags(bundle)
        model_id = log_bundle_model(tracking_uri, run_id, bundle, name=name)
    registered = _existing_model(client, name)
    if registered is None:
        client.create_registered_model(name, description="Watermark detector: MLflow pyfunc models of the export bundle (TorchScript + spec + threshold)")
        has_champion = False
    else:
        has_champion = CHAMPION in (registered.aliases or {})
    mv = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, tags=tags, description=description, model_id=model_id
    )
    alias = CHALLENGER if has_champion else CHAMPION
    client.set_registered_model_alias(name, alias, mv.version)
    return _to_version(client.get_model_version(name, mv.version))


def _bundle_tags(bundle: Path) -> dict[str, str]:
    tags: dict[str, str] = {}
    for file, keys in (("threshold.json", ("threshold", "rule")), ("preprocess.json", ("image_size", "resize"))):
        values = json.loads((bundle / file).read_text(encoding="utf-8"))
        tags.update({key: str(values[key]) for key in keys if key in values})
    return tags


def model_signature() -> Any:
    """Input: a binary column ``image``. Output: one row of verdict per image (see handler/mlflow_pyfunc.py)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    from handler import mlflow_pyfunc

    types = {  # column -> (type, always set)
        "probability": (DataType.double, False), "threshold": (DataType.double, True), "watermark": (DataType.boolean, False),
        "error": (DataType.string, False), "status": (DataType.long, True),
    }
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, mlflow_pyfunc.INPUT_COLUMN)]),
        outputs=Schema([ColSpec(types[c][0], c, required=types[c][1]) for c in mlflow_pyfunc.OUTPUT_COLUMNS]),
    )


def example_image() -> bytes:
    """A small JPEG (64x48 gradient) for the model's input example."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:48, 0:64]
    pixels = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def model_requirements() -> list[str]:
    """``name==version`` of what the pyfunc imports, as installed (local labels such as +cu130 dropped)."""
    return [f"{dist}=={dist_metadata.version(dist).split('+', 1)[0]}" for dist in MODEL_REQUIREMENTS]


def _stage_code(root: Path) -> Path:
    """``root/watermark_pyfunc``: the pyfunc module and the shared preprocessing, as a package."""
    from handler import mlflow_pyfunc

    source = Path(mlflow_pyfunc.__file__).parent
    package = root / PYFUNC_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        '"""handler/mlflow_pyfunc.py and handler/preprocess.py of the watermark detector, as logged with the model."""\n',
        encoding="utf-8",
    )
    for file in PYFUNC_CODE:
        shutil.copy2(source / file, package / file)
    return package


def check_pyfunc(bundle: Path, example: Any, run_id: str) -> None:
    """The pyfunc loads the bundle on the CPU and answers ``example`` with a verdict, else RegistryError."""
    from handler import mlflow_pyfunc

    try:
        answer = mlflow_pyfunc.WatermarkPyfunc(bundle).predict(example)
    except Exception as exc:
        raise RegistryError(f"run {run_id}: the pyfunc cannot load or score its bundle ({type(exc).__name__}: {exc})") from exc
    if answer["status"].tolist() != [200] * len(example):
        raise RegistryError(f"run {run_id}: the pyfunc did not score its input example: {answer['error'].tolist()}")


def _new_logged_model(tracking_uri: str, run_id: str, name: str) -> str:
    """A pending logged model of run ``run_id``, in the run's experiment (``Model.log`` alone
    would put a finished run's model in the current, default experiment, under ./mlruns)."""
    import mlflow

    run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    logged = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, experiment_id=run.info.experiment_id, params=dict(run.data.params),
        model_type=PYFUNC_PACKAGE,
    )
    return logged.model_id


def log_bundle_model(tracking_uri: str, run_id: str, bundle: Path, *, name: str = "watermark") -> str:
    """Log the bundle folder as an MLflow pyfunc model of run ``run_id``; returns the model id.

    The pyfunc is checked on the input example first (:func:`check_pyfunc`), so a version
    that MLflow cannot serve is never registered.
    """
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    from handler import mlflow_pyfunc

    example = pd.DataFrame({mlflow_pyfunc.INPUT_COLUMN: [example_image()]})
    check_pyfunc(bundle, example, run_id)
    spec = json.loads((bundle / "preprocess.json").read_text(encoding="utf-8"))
    threshold = json.loads((bundle / "threshold.json").read_text(encoding="utf-8"))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model_id = _new_logged_model(tracking_uri, run_id, name)
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        staged = Path(tmp) / EXPORT_ARTIFACT_PATH  # the model's data folder is then data/export
        shutil.copytree(bundle, staged)
        Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, flavor_name="pyfunc", run_id=run_id, model_id=model_id,
            loader_module=PYFUNC_LOADER, data_path=str(staged), code_paths=[str(_stage_code(Path(tmp) / "code"))],
            signature=model_signature(), input_example=example, pip_requirements=model_requirements(),
            metadata={"preprocess": spec, "threshold": threshold, "bundle": f"data/{EXPORT_ARTIFACT_PATH}"},
        )
    return model_id


def list_versions(tracking_uri: str, name: str = "watermark") -> list[RegisteredVersion]:
    """Every version of ``name``, newest first, with its aliases."""
    client = _client(tracking_uri)
    model = _existing_model(client, name)
    if model is None:
        raise RegistryError(f"registered model {name!r} does not exist in {tracking_uri}; train with --register first")
    versions = [_to_version(mv) for mv in client.search_model_versions(f"name='{name}'")]
    # Search results do not carry aliases; the registered model has the map.
    for v in versions:
        v.aliases = sorted(alias for alias, version in (model.aliases or {}).items() if str(version) == v.version)
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def resolve(tracking_uri: str, uri: str) -> RegisteredVersion:
    """The version a ``models:/`` URI points at; a clear error when there is none."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    client = _client(tracking_uri)
    if _existing_model(client, name) is None:
        raise RegistryError(f"{uri}: registered model {name!r} does not exist in {tracking_uri}")
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        known = ", ".join(f"{v.version}{'@' + ','.join(v.aliases) if v.aliases else ''}" for v in list_versions(tracking_uri, name))
        raise RegistryError(f"{uri}: no such {'alias' if alias else 'version'}; versions are {known}") from None
    return _to_version(mv)


def promote(tracking_uri: str, name: str, version: str, alias: str = CHAMPION) -> RegisteredVersion:
    """Point ``alias`` at ``version``. Promoting a new champion keeps the old one as ``previous``
    and clears ``challenger`` when it pointed at the promoted version."""
    if not _ALIAS.match(alias):
        raise RegistryError(f"--alias {alias!r}: letters, digits, '_' and '-', starting with a letter")
    target = resolve(tracking_uri, f"models:/{name}/{version}")
    client = _client(tracking_uri)
    if alias == CHAMPION:
        current = client.get_registered_model(name).aliases.get(CHAMPION)
        if current is not None and str(current) != target.version:
            client.set_registered_model_alias(name, PREVIOUS, str(current))
        if CHALLENGER in target.aliases:
            client.delete_registered_model_alias(name, CHALLENGER)
    client.set_registered_model_alias(name, alias, target.version)
    return resolve(tracking_uri, f"models:/{name}/{target.version}")


def fetch(tracking_uri: str, uri: str, out_dir: Path, *, overwrite: bool = False) -> RegisteredVersion:
    """Download the export bundle of ``uri`` into ``out_dir`` (complete, or not at all): the
    model's ``data/export`` folder for an MLflow model, the whole source for a bare bundle.

    ``model_info.json`` of the copy gains a ``registry`` entry (name, version, URI, run)
    so the archive built from it says where it came from.
    """
    import mlflow

    version = resolve(tracking_uri, uri)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"--out {out_dir}: exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(staging / "dl")))
        bundle = bundle_folder(local, f"{uri} (version {version.version})")
        missing = [f for f in BUNDLE_FILES if not (bundle / f).is_file()]
        if missing:
            raise RegistryError(f"{uri} (version {version.version}): bundle lacks {missing}; register an exported run")
        info_path = bundle / "model_info.json"
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        info["registry"] = {
            "name": version.name, "version": version.version, "uri": uri, "run_id": version.run_id, "aliases": version.aliases,
            "source": version.source, "kind": version.kind,
        }
        write_json_atomic(info_path, info)
        swap_folder(bundle, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def bundle_folder(local: Path, what: str) -> Path:
    """The export bundle inside a downloaded version: the pyfunc flavour's data folder of an
    MLflow model (``MLmodel`` present), else the folder itself (a version of a bare bundle)."""
    if not (local / "MLmodel").is_file():
        return local
    from mlflow.models import Model

    flavor = Model.load(str(local / "MLmodel")).flavors.get(PYFUNC_FLAVOR) or {}
    data = flavor.get("data")
    if not isinstance(data, str) or not (local / data).is_dir():
        raise RegistryError(
            f"{what}: an MLflow model without the bundle folder (python_function data is {data!r}); "
            "only versions registered by train --register (or registry register) hold a bundle"
        )
    return local / data
