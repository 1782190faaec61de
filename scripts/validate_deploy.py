#!/usr/bin/env python3
"""Validate the manifests in deploy/ without a cluster: real API schemas, then this image's rules.

Every YAML document in a folder is checked, and again with each ``patch-*.yaml`` of that
folder (a JSON patch, RFC 6902, as ``kubectl patch --type json --patch-file`` applies it)
applied to the document it targets:

1. **API schema.** Every field must be a field of the generated API models, with the right
   type, and required fields must be present: KServe's SDK models for InferenceService
   (``kserve==0.21.0``, installed by scripts/setup_venv.sh into .venv/kserve-sdk), the
   Kubernetes Python client's models for everything else and for the pod fields inside
   the predictor. Core kinds, and the predictor's pod, are also validated strictly against
   Kubernetes' own JSON schema for ``--kube-version`` (kubernetes-validate).
2. **This image's rules** (for documents that pass 1). The probes use the key keeper's keyless /live and /ready on
   8083; the container serves on 8080 and runs as UID 10001 without privilege
   escalation; CPU and memory are limited and OMP_NUM_THREADS equals the CPU limit; only
   environment variables the entry point reads are set, with allowed values; the grace
   period covers the drain; the model store is mounted (Deployment) or fetched from
   STORAGE_URI into /mnt/models (InferenceService); a Service selects the Deployment's
   pods and never exposes the management port 8081; with TOKEN_AUTH=off a NetworkPolicy
   guards the pods; a canary percentage is 0-100.

    scripts/validate_deploy.py [DIR ...] [--kube-version 1.33]     (default DIR: deploy)

Exit status 0 when every document passes, 1 otherwise (each problem is printed with the
file, the document and the field path).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

REPO = Path(__file__).resolve().parents[1]
KSERVE_SDK = REPO / ".venv" / "kserve-sdk"
KUBE_VERSION = "1.33"

ROOT_MODELS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
IMAGE = "watermark-serve"
SERVING_PORT, MANAGEMENT_PORT, PROBE_PORT = 8080, 8081, 8083
UID = 10001
ENTRY_ENV = {  # what scripts/container_entry.sh reads (and KServe's STORAGE_URI)
    "MODEL_STORE", "OMP_NUM_THREADS", "TOKEN_AUTH", "DRAIN_MIN_S", "DRAIN_TIMEOUT_S", "STORAGE_URI",
}
KSERVE_MODEL_DIR = "/mnt/models"


@dataclass
class Document:
    """One manifest document: where it came from, and its data."""

    file: Path
    data: dict[str, Any]
    patch: Path | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = f"{self.data.get('kind', '?')} {self.data.get('metadata', {}).get('name', '?')}"
        file = self.file.resolve()
        shown = file.relative_to(Path.cwd()) if file.is_relative_to(Path.cwd()) else file
        return f"{shown}: {name}" + (f" + {self.patch.name}" if self.patch else "")


# ------------------------------------------------------------------------ API models


class ApiModels:
    """Resolve a generated model class by name: KServe's SDK first, then the Kubernetes client."""

    def __init__(self, kserve_sdk: Path = KSERVE_SDK) -> None:
        from kubernetes.client import models as kube

        self.kube = kube
        self.kserve = load_kserve_models(kserve_sdk)

    def get(self, name: str, near: type | None = None) -> type:
        """The class ``name``; a name referenced by a Kubernetes model is looked up there first."""
        order = (self.kube, self.kserve) if near is not None and near.__module__.startswith("kubernetes.") \
            else (self.kserve, self.kube)
        for module in order:
            if hasattr(module, name):
                return getattr(module, name)
        raise KeyError(f"{name}: no such API model")


def load_kserve_models(sdk: Path) -> types.ModuleType:
    """``kserve.models`` from the SDK folder, without ``kserve/__init__.py``.

    The package's ``__init__`` starts importing KServe's model server (FastAPI, gRPC, ...),
    whose pins would downgrade this project's; the generated API models need only six.
    """
    package_dir = sdk / "kserve"
    if not (package_dir / "models" / "__init__.py").is_file():
        raise SystemExit(f"validate_deploy: KServe's SDK models not found in {sdk}; run scripts/setup_venv.sh")
    if "kserve" not in sys.modules:
        package = types.ModuleType("kserve")
        package.__path__ = [str(package_dir)]
        sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,), "bytes": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
    "datetime": (str,), "date": (str,),
}
# The two generators spell containers differently: list[X] / dict(str, X) (KServe) and
# List[X] / Dict[str, X] (Kubernetes client 37).
LIST_TYPE = re.compile(r"^[Ll]ist\[(.*)\]$")
DICT_TYPE = re.compile(r"^(?:dict\(str, (.*)\)|Dict\[str, (.*)\])$")


def check_fields(models: ApiModels, value: Any, type_name: str, path: str, near: type | None = None) -> list[str]:
    """Problems of ``value`` as an instance of the generated type ``type_name`` (empty: fine)."""
    if type_name == "object":
        return []
    if match := LIST_TYPE.match(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list ({type_name}), got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in check_fields(models, item, match[1], f"{path}[{i}]", near)]
    if match := DICT_TYPE.match(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping ({type_name}), got {type(value).__name__}"]
        inner = match[1] or match[2]
        return [p for k, item in value.items() for p in check_fields(models, item, inner, f"{path}.{k}", near)]
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
    cls = models.get(type_name, near)
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name}), got {type(value).__name__}"]
    if issubclass(cls, pydantic.BaseModel):  # Kubernetes client 37: pydantic models, extra fields forbidden
        return pydantic_problems(cls, value, path)
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    problems, kwargs = [], {}
    for key, item in value.items():
        if key not in by_json:
            problems.append(f"{path}.{key}: not a field of {type_name}")
            continue
        attr = by_json[key]
        problems += check_fields(models, item, cls.openapi_types[attr], f"{path}.{key}", cls)
        kwargs[attr] = item
    try:
        cls(**kwargs)  # KServe's generated setters reject missing required fields
    except ValueError as exc:
        problems.append(f"{path}: {type_name}: {exc}")
    return problems


def pydantic_problems(cls: type, value: dict[str, Any], path: str) -> list[str]:
    try:
        cls.model_validate(value)
    except pydantic.ValidationError as exc:
        return [f"{path}.{'.'.join(str(part) for part in error['loc'])}: {cls.__name__}: {error['msg']}"
                for error in exc.errors()]
    return []


def schema_problems(models: ApiModels, doc: dict[str, Any], kube_version: str) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in ROOT_MODELS:
        known = ", ".join(f"{kind} ({api})" for api, kind in ROOT_MODELS)
        return [f"apiVersion {key[0]!r} kind {key[1]!r}: not a kind this checker knows ({known})"]
    problems = [p.lstrip(".") for p in check_fields(models, doc, ROOT_MODELS[key], "")]
    if key[0] != "serving.kserve.io/v1beta1":
        problems += kube_schema_problems(doc, kube_version)
    else:
        predictor = doc.get("spec", {}).get("predictor", {})
        pod_fields = set(models.get("V1PodSpec").attribute_map.values())
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
               "spec": {k: v for k, v in predictor.items() if k in pod_fields}}
        problems += [f"spec.predictor (as a pod){p}" for p in kube_schema_problems(pod, kube_version)]
    return problems


def kube_schema_problems(doc: dict[str, Any], kube_version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{'.' + where if where else ''}: Kubernetes {kube_version} schema: {exc.message}"]
    return []


# ------------------------------------------------------------------------ JSON patch


def pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def apply_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add / replace / remove / test on a copy of ``doc``; ValueError when one fails."""
    result = copy.deepcopy(doc)
    for number, op in enumerate(operations, 1):
        kind, parts = op.get("op"), pointer(str(op.get("path", "")))
        parent: Any = result
        for part in parts[:-1]:
            try:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            except (KeyError, IndexError, ValueError):
                raise ValueError(f"operation {number} ({kind} {op.get('path')}): {part!r} does not exist") from None
        last = parts[-1]
        index: Any = (len(parent) if last == "-" else int(last)) if isinstance(parent, list) else last
        exists = (0 <= index < len(parent)) if isinstance(parent, list) else index in parent
        if kind == "test":
            if not exists or parent[index] != op.get("value"):
                found = parent[index] if exists else "nothing"
                raise ValueError(f"operation {number} (test {op['path']}): expected {op.get('value')!r}, found {found!r}")
        elif kind == "add":
            if isinstance(parent, list):
                parent.insert(index, copy.deepcopy(op["value"]))
            else:
                parent[index] = copy.deepcopy(op["value"])
        elif kind in ("replace", "remove"):
            if not exists:
                raise ValueError(f"operation {number} ({kind} {op['path']}): nothing there to {kind}")
            if kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            else:
                del parent[index]
        else:
            raise ValueError(f"operation {number}: op {kind!r} is not supported (add, replace, remove, test)")
    return result


# ------------------------------------------------------------------------ this image's rules


def cpu_cores(quantity: Any) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_and_container(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """(pod spec, the serving container, its path) of a Deployment or an InferenceService."""
    if doc.get("kind") == "InferenceService":
        pod, path = doc.get("spec", {}).get("predictor", {}), "spec.predictor"
    else:
        pod, path = doc.get("spec", {}).get("template", {}).get("spec", {}), "spec.template.spec"
    for i, container in enumerate(pod.get("containers", [])):
        if IMAGE in str(container.get("image", "")):
            return pod, container, f"{path}.containers[{i}]"
    return pod, None, path


def port_number(container: dict[str, Any], port: Any) -> Any:
    for declared in container.get("ports", []):
        if port == declared.get("name"):
            return declared.get("containerPort")
    return port


def image_problems(doc: dict[str, Any], siblings: list[dict[str, Any]]) -> list[str]:
    kind = doc.get("kind")
    if kind == "Service":
        return service_problems(doc, siblings)
    if kind not in ("Deployment", "InferenceService"):
        return []
    pod, container, where = pod_and_container(doc)
    if container is None:
        return [f"{where}.containers: no container runs the {IMAGE} image"]
    problems: list[str] = []
    if kind == "InferenceService" and container.get("name") != "kserve-container":
        problems.append(f"{where}.name: KServe serves the container named kserve-container, not {container.get('name')!r}")
    if SERVING_PORT not in [p.get("containerPort") for p in container.get("ports", [])]:
        problems.append(f"{where}.ports: TorchServe's inference port {SERVING_PORT} is not declared")
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or port_number(container, get.get("port")) != PROBE_PORT:
            problems.append(f"{where}.{probe}: must be httpGet {path} on {PROBE_PORT} (the keyless probe), "
                            f"got {get.get('path')!r} on {get.get('port')!r}")
    security = pod.get("securityContext", {})
    if security.get("runAsNonRoot") is not True or security.get("runAsUser") != UID:
        problems.append(f"{where[: where.rindex('.containers')]}.securityContext: needs runAsNonRoot: true and runAsUser: {UID}")
    if container.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}.securityContext.allowPrivilegeEscalation: must be false")
    env = {e.get("name"): e.get("value") for e in container.get("env", [])}
    problems += [f"{where}.env: {name!r} is not read by the image (known: {', '.join(sorted(ENTRY_ENV))})"
                 for name in env if name not in ENTRY_ENV]
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" not in limits or "memory" not in limits:
        problems.append(f"{where}.resources.limits: set cpu and memory (threads and batching depend on them)")
    elif str(env.get("OMP_NUM_THREADS")) != str(math.ceil(cpu_cores(limits["cpu"]))):
        problems.append(f"{where}.env.OMP_NUM_THREADS: {env.get('OMP_NUM_THREADS')!r} does not match the CPU limit "
                        f"{limits['cpu']!r} (expected {math.ceil(cpu_cores(limits['cpu']))})")
    if env.get("TOKEN_AUTH", "on") not in ("on", "off"):
        problems.append(f"{where}.env.TOKEN_AUTH: {env['TOKEN_AUTH']!r}, expected on or off")
    try:
        drain = int(env.get("DRAIN_MIN_S", 0)) + int(env.get("DRAIN_TIMEOUT_S", 8))
    except ValueError:
        problems.append(f"{where}.env: DRAIN_MIN_S / DRAIN_TIMEOUT_S must be whole seconds")
        drain = 0
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if drain + 5 > grace:
        problems.append(f"{where}: terminationGracePeriodSeconds {grace} leaves no time to stop after a drain of "
                        f"up to {drain} s (needs at least {drain + 5})")
    store = env.get("MODEL_STORE")
    if kind == "InferenceService":
        if not env.get("STORAGE_URI") or store != KSERVE_MODEL_DIR:
            problems.append(f"{where}.env: the model store comes from STORAGE_URI, so MODEL_STORE must be {KSERVE_MODEL_DIR}")
        percent = doc["spec"]["predictor"].get("canaryTrafficPercent")
        if percent is not None and not 0 <= percent <= 100:
            problems.append(f"spec.predictor.canaryTrafficPercent: {percent} is not a percentage")
        low = doc["spec"]["predictor"].get("minReplicas", 1)
        high = doc["spec"]["predictor"].get("maxReplicas", low)
        if high < low:
            problems.append(f"spec.predictor: maxReplicas {high} < minReplicas {low}")
    elif store and not any(m.get("mountPath") == store and m.get("readOnly") for m in container.get("volumeMounts", [])):
        problems.append(f"{where}.volumeMounts: MODEL_STORE={store} is not a read-only volume mount")
    if kind == "Deployment" and env.get("TOKEN_AUTH") == "off" and not guarded(doc, siblings):
        problems.append(f"{where}.env.TOKEN_AUTH: off, but no NetworkPolicy in this file selects these pods")
    return problems


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def guarded(deployment: dict[str, Any], siblings: list[dict[str, Any]]) -> bool:
    return any(
        doc.get("kind") == "NetworkPolicy"
        and selects(doc.get("spec", {}).get("podSelector", {}).get("matchLabels", {}), pod_labels(deployment))
        for doc in siblings
    )


def service_problems(service: dict[str, Any], siblings: list[dict[str, Any]]) -> list[str]:
    selector = service.get("spec", {}).get("selector", {})
    targets = [d for d in siblings if d.get("kind") == "Deployment" and selects(selector, pod_labels(d))]
    if not targets:
        return [f"spec.selector: {selector} selects no Deployment's pods in this file"]
    _, container, _ = pod_and_container(targets[0])
    problems = []
    for i, port in enumerate(service.get("spec", {}).get("ports", [])):
        target = port_number(container or {}, port.get("targetPort", port.get("port")))
        declared = [p.get("containerPort") for p in (container or {}).get("ports", [])]
        if target == MANAGEMENT_PORT:
            problems.append(f"spec.ports[{i}]: exposes the management API ({MANAGEMENT_PORT}); keep it inside the pod")
        elif target not in declared:
            problems.append(f"spec.ports[{i}].targetPort: {port.get('targetPort')!r} is not a port of the container")
    return problems


# ------------------------------------------------------------------------ driver


def documents(folder: Path) -> list[Document]:
    """The folder's manifests, then each manifest its patches apply to, patched."""
    docs: list[Document] = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("patch-"):
            continue
        try:
            loaded = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        except yaml.YAMLError as exc:
            raise SystemExit(f"validate_deploy: {path}: not valid YAML ({exc})") from None
        for data in loaded:
            if not isinstance(data, dict):
                raise SystemExit(f"validate_deploy: {path}: a document is a {type(data).__name__}, not a mapping")
            docs.append(Document(path, data))
    patched = []
    for patch in sorted(folder.glob("patch-*.yaml")):
        operations = yaml.safe_load(patch.read_text(encoding="utf-8"))
        if not isinstance(operations, list):
            raise SystemExit(f"validate_deploy: {patch}: a JSON patch is a list of operations")
        bases = [d for d in docs if d.data.get("kind") in ("InferenceService", "Deployment")]
        if len(bases) != 1:
            raise SystemExit(f"validate_deploy: {patch}: needs exactly one InferenceService or Deployment in {folder}")
        base = bases[0]
        try:
            patched.append(Document(base.file, apply_patch(base.data, operations), patch=patch))
        except ValueError as exc:
            patched.append(Document(base.file, base.data, patch=patch, problems=[f"{patch.name}: {exc}"]))
    return docs + patched


def validate(folder: Path, kube_version: str = KUBE_VERSION, models: ApiModels | None = None) -> list[Document]:
    models = models or ApiModels()
    docs = documents(folder)
    for doc in docs:
        siblings = [d.data for d in docs if d.file == doc.file and d.patch is None]
        if doc.problems:  # the patch did not apply
            continue
        doc.problems = schema_problems(models, doc.data, kube_version)  # the image's rules assume valid types
        doc.problems = doc.problems or image_problems(doc.data, siblings)
    return docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="folders of manifests (default: deploy/kserve and deploy/kubernetes)")
    parser.add_argument("--kube-version", default=KUBE_VERSION, help=f"Kubernetes schema version (default {KUBE_VERSION})")
    args = parser.parse_args(argv)
    folders = args.folders or sorted(p for p in (REPO / "deploy").iterdir() if p.is_dir())
    models = ApiModels()
    failed = 0
    for folder in folders:
        if not folder.is_dir():
            parser.error(f"{folder}: not a folder")
        for doc in validate(folder, args.kube_version, models):
            print(f"{'ok  ' if not doc.problems else 'FAIL'} {doc.label}")
            for problem in doc.problems:
                print(f"       {problem}")
            failed += bool(doc.problems)
    print(f"validate_deploy: {'all documents pass' if not failed else f'{failed} documents with problems'}"
          f" (Kubernetes {args.kube_version} schema, KServe SDK models)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
