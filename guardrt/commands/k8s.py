"""`guardrt k8s`: Kubernetes manifests for replicated Triton serving a `guardrt repo` model repository.

Writes deployment.yaml, service.yaml, pvc.yaml, hpa.yaml and prometheus-adapter-rules.yaml for one flavor
(runtime/k8s.py says what each holds). The default flavor's output is committed in deploy/k8s/python/.
"""
from __future__ import annotations

NAME = "k8s"
HELP = "write Kubernetes manifests (Deployment, Services, PVC, queue-time HPA) for Triton serving a guardrt repository"


def add_arguments(p) -> None:
    p.add_argument("--flavor", default="python", choices=["python", "onnxruntime", "tensorrt"],
                   help="the repository's flavor (as `guardrt repo --flavor`; default: python)")
    p.add_argument("--out", default=None, help="output directory (default: deploy/k8s/<flavor>)")
    p.add_argument("--name", default="guardrt-triton", help="Deployment / Service name (default: guardrt-triton)")
    p.add_argument("--namespace", default="guardrt", help="namespace (default: guardrt)")
    p.add_argument("--image", help="container image (default: NVIDIA's tritonserver:24.10-py3 for the native "
                                   "flavors, the image of deploy/docker/Dockerfile.python for python)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per pod (default: 1 for onnxruntime / tensorrt, "
                                                          "0 for python)")
    p.add_argument("--cpu", help="CPU request per pod (default: 2, or 4 with GPUs)")
    p.add_argument("--memory", help="memory request and limit per pod (default: 4Gi, or 16Gi with GPUs)")
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaler minimum (default: 1)")
    p.add_argument("--max-replicas", type=int, default=4, help="autoscaler maximum (default: 4)")
    p.add_argument("--queue-target-us", type=int, default=20_000,
                   help="average queue time per request, in microseconds, the autoscaler keeps pods at "
                        "(default: 20000)")
    p.add_argument("--repo-claim", help="PersistentVolumeClaim holding the model repository (default: NAME-repo)")


def run(args) -> int:
    from guardrt.runtime.k8s import DeploymentOptions, write_manifests

    options = DeploymentOptions(
        flavor=args.flavor, name=args.name, namespace=args.namespace, image=args.image, gpus=args.gpus,
        cpu=args.cpu, memory=args.memory, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        queue_target_us=args.queue_target_us, repo_claim=args.repo_claim)
    for path in write_manifests(args.out or f"deploy/k8s/{args.flavor}", options):
        print(f"wrote {path}")
    return 0
