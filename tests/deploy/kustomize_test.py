"""Renders deploy/kubernetes (base and every overlay) with `kubectl kustomize` and checks what the
deployment relies on. Structural checks only: this is not yet a validation against the Kubernetes, KEDA
and prometheus-operator schemas (planned).

  kustomize_test.py KUBECTL DEPLOY_KUBERNETES_DIR
"""

import subprocess
import sys

import yaml


def render(kubectl, folder):
    text = subprocess.run([kubectl, "kustomize", folder], check=True, capture_output=True, text=True,
                          timeout=60).stdout
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(text) if o}


def worker(objects):
    return objects[("Deployment", "zoetrope-worker")]["spec"]["template"]["spec"]


def main():
    kubectl, root = sys.argv[1], sys.argv[2]
    base = render(kubectl, f"{root}/base")
    spec = worker(base)
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= container.keys()
    assert "preStop" in container["lifecycle"]
    shm = [v for v in spec["volumes"] if v["name"] == "dshm"][0]
    assert shm["emptyDir"]["medium"] == "Memory"
    # The grace period must outlast the worker's drain timeout.
    drain = [a for a in container["args"] if a.startswith("--drain_timeout=")][0]
    assert drain == "--drain_timeout=10m" and spec["terminationGracePeriodSeconds"] > 600
    scheduler = base[("Deployment", "zoetrope-scheduler")]["spec"]["template"]["spec"]["containers"][0]
    assert scheduler["readinessProbe"]["grpc"]["port"] == 50051
    assert ("PodDisruptionBudget", "zoetrope-worker") in base
    assert any(kind == "Secret" for kind, _ in base)
    policy = base[("NetworkPolicy", "zoetrope-scheduler-worker-port")]["spec"]["ingress"]
    assert any(rule.get("from") and rule["ports"] == [{"port": 50052}] for rule in policy)

    group = worker(render(kubectl, f"{root}/overlays/sp-group"))["containers"][0]
    assert group["resources"]["limits"]["nvidia.com/gpu"] == 4 and "--sp=4" in group["args"]

    scaled = render(kubectl, f"{root}/overlays/autoscaling")
    trigger = scaled[("ScaledObject", "zoetrope-worker")]["spec"]["triggers"][0]
    assert "zoetrope_queue_depth" in trigger["metadata"]["query"]
    assert ("ServiceMonitor", "zoetrope-scheduler") in scaled
    print("kustomize: base, sp-group and autoscaling render; probes, GPUs, drain, policy checked")


if __name__ == "__main__":
    main()
