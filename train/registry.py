"""MLflow model registry: versions of the export bundle, and aliases that say which is live.

A registered version's source is the ``export/`` folder logged by a training run
(TorchScript, preprocessing spec, threshold, provenance), so everything serving needs
travels with the version. Aliases replace the stages MLflow deprecated in 2.9:

* ``champion``: the version that is served (``scripts/create_mar.sh --from-registry``);
* ``challenger``: the newest candidate, set on every registration after the first;
* ``previous``: the champion before the last promotion, for a one-step rollback.

The first version of a model becomes the champion, because nothing is live yet; later
versions become the challenger and are promoted explicitly
(``python -m train registry promote``).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from train.io import sqlite_path, swap_folder, write_json_atomic

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
EXPORT_ARTIFACT_PATH = "export"
BUNDLE_FILES = ("model.pt", "preprocess.json", "threshold.json")
_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))$")
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    )


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
    """Register ``runs:/RUN_ID/export`` as a new version of ``name`` and set its alias.

    The first version becomes ``champion``; later ones become ``challenger``. Tags carry
    the threshold and image size from the logged bundle so ``registry list`` shows them.
    """
    client = _client(tracking_uri)
    files = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, artifact_path)}
    missing = [f for f in BUNDLE_FILES if f not in files]
    if missing:
        raise RegistryError(f"run {run_id}: artifact folder {artifact_path}/ lacks {missing}; only exported runs can be registered")
    registered = _existing_model(client, name)
    if registered is None:
        client.create_registered_model(name, description="Watermark detector export bundles (TorchScript + spec + threshold)")
        has_champion = False
    else:
        has_champion = CHAMPION in (registered.aliases or {})
    tags = _bundle_tags(client, run_id, artifact_path)
    mv = client.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags, description=description)
    alias = CHALLENGER if has_champion else CHAMPION
    client.set_registered_model_alias(name, alias, mv.version)
    return _to_version(client.get_model_version(name, mv.version))


def _bundle_tags(client: Any, run_id: str, artifact_path: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        tags: dict[str, str] = {}
        for file, keys in (("threshold.json", ("threshold", "rule")), ("preprocess.json", ("image_size", "resize"))):
            path = Path(client.download_artifacts(run_id, f"{artifact_path}/{file}", tmp))
            values = json.loads(path.read_text(encoding="utf-8"))
            tags.update({key: str(values[key]) for key in keys if key in values})
        return tags


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
    """Download the export bundle of ``uri`` into ``out_dir`` (complete, or not at all).

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
        missing = [f for f in BUNDLE_FILES if not (local / f).is_file()]
        if missing:
            raise RegistryError(f"{uri} (version {version.version}): bundle lacks {missing}; register an exported run")
        info_path = local / "model_info.json"
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        info["registry"] = {"name": version.name, "version": version.version, "uri": uri, "run_id": version.run_id, "aliases": version.aliases}
        write_json_atomic(info_path, info)
        swap_folder(local, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version
