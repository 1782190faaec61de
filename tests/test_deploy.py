"""deploy/ manifests: they pass the real API models and schemas, and the checker catches what breaks them."""

from __future__ import annotations

import copy
import shutil
import subprocess
from typing import Any, Callable

import pytest
import yaml

from scripts import validate_deploy as vd
from tests.ts_server import PYTHON, REPO

DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def models() -> vd.ApiModels:
    return vd.ApiModels()


def shipped(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if d]


def problems(models: vd.ApiModels, docs: list[dict[str, Any]], index: int) -> list[str]:
    return vd.schema_problems(models, docs[index], vd.KUBE_VERSION) or vd.image_problems(docs[index], docs)


def test_shipped_manifests_pass_and_every_document_is_listed():
    run = subprocess.run([PYTHON, str(REPO / "scripts" / "validate_deploy.py")], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert lines == [
        "ok   deploy/kserve/inferenceservice.yaml: InferenceService watermark",
        "ok   deploy/kserve/inferenceservice.yaml: InferenceService watermark + patch-canary.yaml",
        "ok   deploy/kserve/inferenceservice.yaml: InferenceService watermark + patch-gpu.yaml",
        "ok   deploy/kubernetes/watermark.yaml: Deployment watermark",
        "ok   deploy/kubernetes/watermark.yaml: Service watermark",
        "ok   deploy/kubernetes/watermark.yaml: PodDisruptionBudget watermark",
        "ok   deploy/kubernetes/watermark.yaml: NetworkPolicy watermark",
    ]


def predictor(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return docs[0]["spec"]["predictor"]


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return docs[0]["spec"]["template"]["spec"]


def set_env(container: dict[str, Any], name: str, value: str) -> None:
    for entry in container["env"]:
        if entry["name"] == name:
            entry["value"] = value
            return
    container["env"].append({"name": name, "value": value})


ISVC_BREAKS: list[tuple[str, Callable[[list[dict[str, Any]]], None], str]] = [
    ("misspelt predictor field", lambda d: predictor(d).update(minReplica=1),
     "spec.predictor.minReplica: not a field of V1beta1PredictorSpec"),
    ("string for a number", lambda d: predictor(d).update(canaryTrafficPercent="10"),
     "spec.predictor.canaryTrafficPercent: expected int, got str '10'"),
    ("container without a name", lambda d: predictor(d)["containers"][0].pop("name"),
     "spec.predictor.containers[0].name: V1Container: Field required"),
    ("misspelt probe field", lambda d: predictor(d)["containers"][0]["readinessProbe"].update(periodSecond=5),
     "readinessProbe.periodSecond: V1Container: Extra inputs are not permitted"),
    ("probe on the inference port", lambda d: predictor(d)["containers"][0]["readinessProbe"]["httpGet"].update(port=8080),
     "readinessProbe: must be httpGet /ready on 8083 (the keyless probe), got '/ready' on 8080"),
    ("threads not matching the CPU limit", lambda d: predictor(d)["containers"][0]["resources"]["limits"].update(cpu="4"),
     "env.OMP_NUM_THREADS: '2' does not match the CPU limit '4' (expected 4)"),
    ("an environment variable the image does not read", lambda d: set_env(predictor(d)["containers"][0], "DRAIN_S", "3"),
     "env: 'DRAIN_S' is not read by the image"),
    ("root user", lambda d: predictor(d)["securityContext"].update(runAsUser=0),
     "spec.predictor.securityContext: needs runAsNonRoot: true and runAsUser: 10001"),
    ("model store not where KServe puts it", lambda d: set_env(predictor(d)["containers"][0], "MODEL_STORE", "/models"),
     "MODEL_STORE must be /mnt/models"),
    ("canary over 100 %", lambda d: predictor(d).update(canaryTrafficPercent=110),
     "spec.predictor.canaryTrafficPercent: 110 is not a percentage"),
    ("KServe would not serve the container", lambda d: predictor(d)["containers"][0].update(name="torchserve"),
     "KServe serves the container named kserve-container"),
]


@pytest.mark.parametrize("what, breaks, expected", ISVC_BREAKS, ids=[b[0] for b in ISVC_BREAKS])
def test_inferenceservice_breaks_are_caught(models, what, breaks, expected):
    docs = copy.deepcopy(shipped("kserve/inferenceservice.yaml"))
    assert problems(models, docs, 0) == []
    breaks(docs)
    found = problems(models, docs, 0)
    assert any(expected in p for p in found), (what, found)


KUBE_BREAKS: list[tuple[str, int, Callable[[list[dict[str, Any]]], None], str]] = [
    ("misspelt lifecycle hook", 0, lambda d: pod(d)["containers"][0].update(lifecycle={"preStp": {}}),
     "Additional properties are not allowed ('preStp' was unexpected)"),
    ("grace period shorter than the drain", 0, lambda d: pod(d).update(terminationGracePeriodSeconds=20),
     "terminationGracePeriodSeconds 20 leaves no time to stop after a drain of up to 30 s"),
    ("writable model store", 0, lambda d: pod(d)["containers"][0]["volumeMounts"][0].update(readOnly=False),
     "MODEL_STORE=/models is not a read-only volume mount"),
    ("TOKEN_AUTH neither on nor off", 0, lambda d: set_env(pod(d)["containers"][0], "TOKEN_AUTH", "false"),
     "env.TOKEN_AUTH: 'false', expected on or off"),
    ("keys off and no NetworkPolicy", 0, lambda d: d.pop(3),
     "env.TOKEN_AUTH: off, but no NetworkPolicy in this file selects these pods"),
    ("Service exposing the management API", 1,
     lambda d: d[1]["spec"]["ports"].append({"name": "management", "port": 8081, "targetPort": 8081}),
     "spec.ports[2]: exposes the management API (8081)"),
    ("Service selecting no pods", 1, lambda d: d[1]["spec"].update(selector={"app": "watermark"}),
     "selects no Deployment's pods in this file"),
    ("Service targeting an undeclared port", 1, lambda d: d[1]["spec"]["ports"][0].update(targetPort="http"),
     "spec.ports[0].targetPort: 'http' is not a port of the container"),
    ("PodDisruptionBudget with a string for a number", 2, lambda d: d[2]["spec"].update(minAvailable=[1]),
     "minAvailable"),
]


@pytest.mark.parametrize("what, index, breaks, expected", KUBE_BREAKS, ids=[b[0] for b in KUBE_BREAKS])
def test_kubernetes_breaks_are_caught(models, what, index, breaks, expected):
    docs = copy.deepcopy(shipped("kubernetes/watermark.yaml"))
    assert problems(models, docs, index) == []
    breaks(docs)
    found = problems(models, docs, index)
    assert any(expected in p for p in found), (what, found)


def test_a_patch_that_no_longer_fits_fails_instead_of_changing_another_field(tmp_path, models):
    folder = tmp_path / "kserve"
    shutil.copytree(DEPLOY / "kserve", folder)
    isvc = yaml.safe_load((folder / "inferenceservice.yaml").read_text(encoding="utf-8"))
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    env.insert(0, env.pop())  # STORAGE_URI is no longer the first variable
    (folder / "inferenceservice.yaml").write_text(yaml.safe_dump(isvc), encoding="utf-8")
    by_patch = {d.patch.name if d.patch else "": d.problems for d in vd.validate(folder, models=models)}
    assert by_patch[""] == [] and by_patch["patch-gpu.yaml"] == []
    assert by_patch["patch-canary.yaml"] == [
        "patch-canary.yaml: operation 1 (test /spec/predictor/containers/0/env/0/name): "
        "expected 'STORAGE_URI', found 'DRAIN_TIMEOUT_S'"
    ]


def test_canary_patch_sets_the_new_store_and_the_traffic_share():
    isvc = shipped("kserve/inferenceservice.yaml")[0]
    patched = vd.apply_patch(isvc, yaml.safe_load((DEPLOY / "kserve" / "patch-canary.yaml").read_text()))
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert patched["spec"]["predictor"]["containers"][0]["env"][0] == {"name": "STORAGE_URI",
                                                                       "value": "pvc://watermark-models/v2.1"}
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # the original is left alone


def test_json_patch_operations():
    doc = {"a": {"b": [1, 2]}, "x~y": {"p/q": 1}}
    assert vd.apply_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3}])["a"]["b"] == [1, 2, 3]
    assert vd.apply_patch(doc, [{"op": "add", "path": "/a/b/0", "value": 0}])["a"]["b"] == [0, 1, 2]
    assert vd.apply_patch(doc, [{"op": "remove", "path": "/a/b/1"}])["a"]["b"] == [1]
    assert vd.apply_patch(doc, [{"op": "replace", "path": "/x~0y/p~1q", "value": 2}])["x~y"] == {"p/q": 2}
    for bad, message in (
        ({"op": "replace", "path": "/a/c", "value": 1}, "nothing there to replace"),
        ({"op": "test", "path": "/a/b/0", "value": 9}, "expected 9, found 1"),
        ({"op": "move", "path": "/a", "from": "/x~0y"}, "op 'move' is not supported"),
        ({"op": "add", "path": "/missing/key", "value": 1}, "'missing' does not exist"),
    ):
        with pytest.raises(ValueError, match=message):
            vd.apply_patch(doc, [bad])


def test_unknown_kinds_and_bad_yaml_are_clear_errors(tmp_path, models):
    (tmp_path / "job.yaml").write_text("apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\n", encoding="utf-8")
    [doc] = vd.validate(tmp_path, models=models)
    assert doc.problems == ["apiVersion 'batch/v1' kind 'Job': not a kind this checker knows "
                            "(InferenceService (serving.kserve.io/v1beta1), Deployment (apps/v1), Service (v1), "
                            "PodDisruptionBudget (policy/v1), NetworkPolicy (networking.k8s.io/v1))"]
    (tmp_path / "job.yaml").write_text("kind: [unclosed\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"job.yaml: not valid YAML"):
        vd.validate(tmp_path, models=models)
