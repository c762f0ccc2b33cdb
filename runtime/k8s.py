"""Kubernetes manifests for replicated Triton serving a guardrt model repository (`guardrt k8s`).

One directory per flavor of the repository writer (`runtime/triton_repo.FLAVORS`), so a repository written with
`guardrt repo --flavor F` and the manifests of flavor F always agree:

* `deployment.yaml`: the Triton container (NVIDIA's `nvcr.io/nvidia/tritonserver:24.10-py3` for the native flavors;
  for `python`, an image built from `deploy/docker/Dockerfile.python`: that container plus guardrt and ONNX Runtime),
  the model repository mounted read-only from a PersistentVolumeClaim, `/dev/shm` in memory (the python backend
  talks to its stub through shared memory), readiness / liveness / startup probes on `/v2/health/ready` and
  `/v2/health/live`, resource requests (`nvidia.com/gpu` for the GPU flavors), Prometheus scrape annotations.
* `service.yaml`: a ClusterIP Service (HTTP 8000, gRPC 8001, metrics 8002) and a headless one listing every ready
  pod, for clients that balance gRPC requests themselves (one gRPC connection to the ClusterIP sticks to one pod).
* `pvc.yaml`: the claim the repository lives on.
* `hpa.yaml`: an `autoscaling/v2` HorizontalPodAutoscaler on the average time a request waits in Triton's queue,
  per pod - Triton's `nv_inference_queue_duration_us` over `nv_inference_request_success` - served to the HPA as the
  custom metric `guardrt_queue_us_per_request` by prometheus-adapter;
* `prometheus-adapter-rules.yaml`: the adapter rule that defines that metric (a ConfigMap in the adapter's format).

Nothing here has run on a cluster: the manifests are validated against the Kubernetes JSON schemas of
`KUBERNETES_VERSION` (tests/deploy). PyYAML comes with the `scale` extra.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import InputError, require
from guardrt.runtime.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from guardrt.runtime.triton_repo import FLAVORS

__all__ = ["KUBERNETES_VERSION", "TRITON_IMAGE", "DeploymentOptions", "manifests", "write_manifests"]

KUBERNETES_VERSION = "1.31"  # the API versions the manifests are validated against
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51 = the CPU server used here; TensorRT 10.5
PYTHON_FLAVOR_IMAGE = "guardrt-triton-python:0.1.0"  # build: docker build -f deploy/docker/Dockerfile.python .
QUEUE_METRIC = "guardrt_queue_us_per_request"
REPO_MOUNT = "/models"
GPU_FLAVORS = ("onnxruntime", "tensorrt")  # NVIDIA's native backends, which guardrt writes for GPU hosts


@dataclass(frozen=True)
class DeploymentOptions:
    """What varies between deployments; None means the flavor's default."""

    flavor: str = "python"
    name: str = "guardrt-triton"
    namespace: str = "guardrt"
    image: str | None = None
    gpus: int | None = None  # per pod; default 1 for the native flavors, 0 for python
    cpu: str | None = None  # request per pod
    memory: str | None = None  # request (and limit) per pod
    min_replicas: int = 1
    max_replicas: int = 4
    queue_target_us: int = 20_000  # average queue time per request the HPA holds pods at
    repo_claim: str | None = None  # PersistentVolumeClaim name; default <name>-repo
    repo_size: str = "20Gi"

    def resolved(self) -> "DeploymentOptions":
        if self.flavor not in FLAVORS:
            raise InputError(f"unknown flavor {self.flavor!r}; choose one of {', '.join(FLAVORS)}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise InputError(f"need 1 <= min replicas ({self.min_replicas}) <= max replicas ({self.max_replicas})")
        gpus = self.gpus if self.gpus is not None else (1 if self.flavor in GPU_FLAVORS else 0)
        if self.flavor == "tensorrt" and gpus < 1:
            raise InputError("the tensorrt flavor runs TensorRT plans: it needs a GPU per pod")
        return DeploymentOptions(
            flavor=self.flavor, name=self.name, namespace=self.namespace,
            image=self.image or (PYTHON_FLAVOR_IMAGE if self.flavor == "python" else TRITON_IMAGE),
            gpus=gpus, cpu=self.cpu or ("2" if gpus == 0 else "4"), memory=self.memory or ("4Gi" if gpus == 0 else "16Gi"),
            min_replicas=self.min_replicas, max_replicas=self.max_replicas, queue_target_us=self.queue_target_us,
            repo_claim=self.repo_claim or f"{self.name}-repo", repo_size=self.repo_size)


def _labels(o: DeploymentOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": o.name, "app.kubernetes.io/component": "triton",
            "app.kubernetes.io/part-of": "guardrt", "guardrt/flavor": o.flavor}


def _meta(o: DeploymentOptions, name: str | None = None) -> dict[str, Any]:
    return {"name": name or o.name, "namespace": o.namespace, "labels": _labels(o)}


PORTS = (("http", DEFAULT_HTTP_PORT), ("grpc", DEFAULT_GRPC_PORT), ("metrics", DEFAULT_METRICS_PORT))


def _probe(path: str, period: int, failures: int, initial: int = 0) -> dict[str, Any]:
    probe = {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 5,
             "failureThreshold": failures}
    if initial:
        probe["initialDelaySeconds"] = initial
    return probe


def deployment(o: DeploymentOptions) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": o.cpu, "memory": o.memory}, "limits": {"memory": o.memory}}
    if o.gpus:
        # Extended resources are requested through limits (requests, when set, must equal them).
        resources["limits"]["nvidia.com/gpu"] = o.gpus
    container = {
        "name": "tritonserver",
        "image": o.image,
        # The command goes in args so that the image's entrypoint (NVIDIA's: environment set-up) still runs.
        "args": ["tritonserver", f"--model-repository={REPO_MOUNT}", f"--http-port={DEFAULT_HTTP_PORT}",
                 f"--grpc-port={DEFAULT_GRPC_PORT}", f"--metrics-port={DEFAULT_METRICS_PORT}",
                 # A model that fails to load must fail the pod (and its readiness), not serve the others silently.
                 "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=30"],
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in PORTS],
        # Ready = server live and every model loaded; live = the process answers. Loading (a TensorRT plan, a
        # large ONNX file) may take minutes: the startup probe gives it 10 minutes before liveness counts.
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "startupProbe": _probe("/v2/health/live", 10, 60),
        "resources": resources,
        "volumeMounts": [{"name": "model-repository", "mountPath": REPO_MOUNT, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": 40,  # Triton finishes in-flight requests within --exit-timeout-secs
        "volumes": [
            {"name": "model-repository", "persistentVolumeClaim": {"claimName": o.repo_claim, "readOnly": True}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ],
    }
    if o.gpus:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(o),
        "spec": {
            "replicas": o.min_replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": o.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": _labels(o),
                    # Scraped by a Prometheus using the common kubernetes-pods job (pod and namespace labels).
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(DEFAULT_METRICS_PORT),
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": pod_spec,
            },
        },
    }


def services(o: DeploymentOptions) -> list[dict[str, Any]]:
    ports = [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in PORTS]
    selector = {"app.kubernetes.io/name": o.name}
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(o),
         "spec": {"type": "ClusterIP", "selector": selector, "ports": ports}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(o, f"{o.name}-pods"),
         "spec": {"clusterIP": "None", "selector": selector, "ports": ports}},
    ]


def volume_claim(o: DeploymentOptions) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(o, o.repo_claim),
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": o.repo_size}}}}


def autoscaler(o: DeploymentOptions) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(o),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": o.name},
            "minReplicas": o.min_replicas,
            "maxReplicas": o.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(o.queue_target_us)}}}],
            # Scale up at once on a queue; scale down slowly (a new pod pays its model load again).
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": 300,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
            },
        },
    }


ADAPTER_RULES = f"""\
rules:
  # guardrt: the average time a request waited in Triton's queue over the last minute, per pod (microseconds).
  # Triton exports cumulative counters per model: nv_inference_queue_duration_us and nv_inference_request_success.
  - seriesQuery: 'nv_inference_queue_duration_us{{namespace!="",pod!=""}}'
    resources:
      overrides:
        namespace: {{resource: "namespace"}}
        pod: {{resource: "pod"}}
    name:
      matches: "^nv_inference_queue_duration_us$"
      as: "{QUEUE_METRIC}"
    metricsQuery: >-
      sum(rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>}}[1m])) by (<<.GroupBy>>)
      / clamp_min(sum(rate(nv_inference_request_success{{<<.LabelMatchers>>}}[1m])) by (<<.GroupBy>>), 0.001)
"""


def adapter_rules(o: DeploymentOptions) -> dict[str, Any]:
    """prometheus-adapter's configuration (its `config.yaml`) with the queue-time rule, as the ConfigMap the
    adapter's Deployment mounts. With the prometheus-community Helm chart, put the rule under `rules.custom`."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "prometheus-adapter", "namespace": "monitoring",
                         "labels": {"app.kubernetes.io/name": "prometheus-adapter",
                                    "app.kubernetes.io/part-of": "guardrt"}},
            "data": {"config.yaml": ADAPTER_RULES}}


def manifests(options: DeploymentOptions) -> dict[str, list[dict[str, Any]]]:
    """{file name: [resources]} for one flavor."""
    o = options.resolved()
    return {
        "deployment.yaml": [deployment(o)],
        "service.yaml": services(o),
        "pvc.yaml": [volume_claim(o)],
        "hpa.yaml": [autoscaler(o)],
        "prometheus-adapter-rules.yaml": [adapter_rules(o)],
    }


HEADER = ("# Generated by `guardrt k8s --flavor {flavor}` (runtime/k8s.py); regenerate instead of editing.\n"
          "# Validated against the Kubernetes {version} schemas; never applied to a cluster here.\n")


def render(resources: list[dict[str, Any]], flavor: str) -> str:
    yaml = require("yaml", "scale")

    class _Literal(str):  # multi-line strings (the adapter rules) as readable YAML blocks
        pass

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(_Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))

    def literal(obj):
        if isinstance(obj, dict):
            return {k: literal(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [literal(v) for v in obj]
        return _Literal(obj) if isinstance(obj, str) and "\n" in obj else obj

    docs = [yaml.dump(literal(r), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
            for r in resources]
    return HEADER.format(flavor=flavor, version=KUBERNETES_VERSION) + "---\n" + "---\n".join(docs)


def write_manifests(out_dir: str | Path, options: DeploymentOptions) -> list[Path]:
    """Write the flavor's manifests into `out_dir` (created); returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, resources in manifests(options).items():
        path = out / name
        path.write_text(render(resources, options.flavor), encoding="utf-8")
        written.append(path)
    return written
