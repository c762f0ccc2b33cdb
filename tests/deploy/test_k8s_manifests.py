"""Kubernetes manifests (`guardrt k8s`, deploy/k8s/): schema-valid for the pinned Kubernetes version (strict:
unknown fields rejected), consistent with the repository flavors and the server's ports, and the committed default
flavor equal to what the generator writes. No cluster runs them here."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from guardrt.runtime.k8s import (KUBERNETES_VERSION, QUEUE_METRIC, TRITON_IMAGE, DeploymentOptions, manifests,
                                 write_manifests)
from guardrt.runtime.triton_repo import FLAVORS

REPO_ROOT = Path(__file__).resolve().parents[2]
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate comes with the dev extra")
yaml = pytest.importorskip("yaml")


def _validate(resource: dict) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def _docs(directory: Path) -> list[dict]:
    return [d for f in sorted(directory.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_committed_default_flavor_is_the_generated_one(tmp_path):
    write_manifests(tmp_path, DeploymentOptions())
    committed = REPO_ROOT / "deploy" / "k8s" / "python"
    assert sorted(p.name for p in committed.glob("*.yaml")) == sorted(p.name for p in tmp_path.glob("*.yaml"))
    for f in tmp_path.glob("*.yaml"):
        assert (committed / f.name).read_text() == f.read_text(), f"{f.name}: regenerate with `guardrt k8s`"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_flavor_validates_strictly(flavor, tmp_path):
    write_manifests(tmp_path, DeploymentOptions(flavor=flavor))
    docs = _docs(tmp_path)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                                               "PersistentVolumeClaim", "Service", "Service"]
    for doc in docs:
        _validate(doc)


def test_validator_cli_on_committed_manifests():
    """The same check as a person runs it (its output is in the README)."""
    files = sorted(str(p) for p in (REPO_ROOT / "deploy" / "k8s" / "python").glob("*.yaml"))
    proc = subprocess.run([str(Path(sys.executable).with_name("kubernetes-validate")), "-k", KUBERNETES_VERSION + ".0",
                           "--strict", *files], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every output line is a pass (the file paths are left out: a checkout path may contain "fail").
    lines = [ln.replace(str(REPO_ROOT), "") for ln in proc.stdout.splitlines() if ln.strip()]
    assert proc.stdout.count(" passed for resource ") == 6 and not any("fail" in ln.lower() for ln in lines), lines


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["spec"].__setitem__("replica", 2), "Additional properties"),  # a typo: unknown field
    (lambda d: d["spec"].__setitem__("replicas", "2"), "is not of type"),
    (lambda d: d["spec"]["template"]["spec"].pop("containers"), "'containers' is a required property"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].__setitem__("path", 5),
     "is not of type"),
])
def test_validator_rejects_broken_manifests(mutate, message):
    deployment = copy.deepcopy(manifests(DeploymentOptions())["deployment.yaml"][0])
    mutate(deployment)
    with pytest.raises(kubernetes_validate.ValidationError, match=message):
        _validate(deployment)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_flavor_consistency(flavor):
    from guardrt.runtime.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

    m = manifests(DeploymentOptions(flavor=flavor))
    dep = m["deployment.yaml"][0]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
    assert gpus == (0 if flavor == "python" else 1)
    assert container["image"] == (TRITON_IMAGE if flavor != "python" else "guardrt-triton-python:0.1.0")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT, "metrics": DEFAULT_METRICS_PORT}
    assert f"--model-repository={container['volumeMounts'][0]['mountPath']}" in container["args"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == m["pvc.yaml"][0]["metadata"]["name"]
    for svc in m["service.yaml"]:
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    hpa = m["hpa.yaml"][0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == QUEUE_METRIC
    rules = yaml.safe_load(m["prometheus-adapter-rules.yaml"][0]["data"]["config.yaml"])["rules"]
    assert rules[0]["name"]["as"] == QUEUE_METRIC and "nv_inference_queue_duration_us" in rules[0]["metricsQuery"]


def test_dockerfile_builds_on_the_same_triton_image():
    text = (REPO_ROOT / "deploy" / "docker" / "Dockerfile.python").read_text()
    assert f"FROM {TRITON_IMAGE}\n" in text
    assert "onnxruntime==" in text and '".[client]"' in text


def test_impossible_options_are_one_line_errors():
    from guardrt.runtime.errors import InputError

    with pytest.raises(InputError, match="needs a GPU"):
        manifests(DeploymentOptions(flavor="tensorrt", gpus=0))
    with pytest.raises(InputError, match="min replicas"):
        manifests(DeploymentOptions(min_replicas=3, max_replicas=2))
