"""deploy/kubernetes: every kustomization (base and each overlay) rendered and checked.

  kustomize_test.py DEPLOY_KUBERNETES_DIR                  what the deployment relies on (probes, GPUs,
                                                           drain, policy, scaling), rendered by render.py
                                                           (kubectl kustomize, else kustomize, else builtin)
  kustomize_test.py DEPLOY_KUBERNETES_DIR --schemas NODE   every object against the Kubernetes, KEDA and
                                                           prometheus-operator schemas (validate/validate.js),
                                                           plus broken objects that must be rejected
  kustomize_test.py DEPLOY_KUBERNETES_DIR --compare        the builtin renderer equals kubectl kustomize

The last two exit 77 (ctest skips) when what they need is missing, saying what.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77


def kustomizations(root):
    folders = [os.path.join(root, "base")]
    overlays = os.path.join(root, "overlays")
    folders += sorted(os.path.join(overlays, name) for name in os.listdir(overlays))
    return folders


def by_name(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def worker(objects):
    return objects[("Deployment", "zoetrope-worker")]["spec"]["template"]["spec"]


def check_structure(render, root):
    engine, objects = render.render(f"{root}/base")
    base = by_name(objects)
    spec = worker(base)
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= container.keys()
    assert "preStop" in container["lifecycle"]
    shm = [v for v in spec["volumes"] if v["name"] == "dshm"][0]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # The grace period must outlast the worker's drain timeout.
    drain = [a for a in container["args"] if a.startswith("--drain_timeout=")][0]
    assert drain == "--drain_timeout=10m" and spec["terminationGracePeriodSeconds"] > 600
    models = [v for v in spec["volumes"] if v["name"] == "models"][0]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", models) in base, f"the models claim {models} is not part of the base"
    # The worker token comes from the generated (hash-suffixed) Secret.
    token = container["env"][0]["valueFrom"]["secretKeyRef"]["name"]
    assert ("Secret", token) in base and token.startswith("zoetrope-worker-token-"), token

    scheduler_pod = base[("Deployment", "zoetrope-scheduler")]["spec"]["template"]["spec"]
    scheduler = scheduler_pod["containers"][0]
    assert scheduler["readinessProbe"]["grpc"]["port"] == 50051
    assert scheduler["livenessProbe"]["grpc"]["port"] == 50051
    data = [v for v in scheduler_pod["volumes"] if v["name"] == "data"][0]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", data) in base
    service_ports = {p["name"] for p in base[("Service", "zoetrope-scheduler")]["spec"]["ports"]}
    assert {"grpc", "metrics"} <= service_ports, service_ports
    assert ("PodDisruptionBudget", "zoetrope-worker") in base
    policy = base[("NetworkPolicy", "zoetrope-scheduler-worker-port")]["spec"]["ingress"]
    # 50052 (the worker API) only from worker pods; no rule opens it to everyone.
    assert any(rule.get("from") and rule["ports"] == [{"port": 50052}] for rule in policy)
    assert not any(not rule.get("from") and {"port": 50052} in rule.get("ports", []) for rule in policy)
    assert all(o["metadata"].get("namespace") == "zoetrope" for o in objects)

    group = worker(by_name(render.render(f"{root}/overlays/sp-group")[1]))["containers"][0]
    assert group["resources"]["limits"]["nvidia.com/gpu"] == 4 and "--sp=4" in group["args"]
    assert "--gpus=0,1,2,3" in group["args"]

    scaled = by_name(render.render(f"{root}/overlays/autoscaling")[1])
    scaled_object = scaled[("ScaledObject", "zoetrope-worker")]["spec"]
    assert scaled_object["scaleTargetRef"]["name"] == "zoetrope-worker"
    assert "zoetrope_queue_depth" in scaled_object["triggers"][0]["metadata"]["query"]
    assert ("ServiceMonitor", "zoetrope-scheduler") in scaled and ("PodMonitor", "zoetrope-worker") in scaled
    print(f"kustomize ({engine}): base, sp-group and autoscaling render; probes, GPUs, shm, drain, claims, "
          "secrets, policy, monitors and scaling checked")


def validate(node, validator, objects):
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(objects, file)
        file.flush()
        return subprocess.run([node, validator, file.name], capture_output=True, text=True, timeout=120)


def check_schemas(render, root, node):
    folder = os.path.join(root, "validate")
    validator = os.path.join(folder, "validate.js")
    if not shutil.which(node):
        print(f"SKIP: no {node}: install nodejs (scripts/install-deps.sh does)")
        sys.exit(SKIP)
    if not os.path.isdir(os.path.join(folder, "node_modules", "kubernetes-models")):
        print(f"SKIP: the schemas are not installed: run `npm ci --prefix {folder}` "
              "(scripts/install-deps.sh does)")
        sys.exit(SKIP)
    total = 0
    everything = []
    for kustomization in kustomizations(root):
        objects = render.render(kustomization)[1]
        result = validate(node, validator, objects)
        assert result.returncode == 0, f"{kustomization}:\n{result.stdout}{result.stderr}"
        total += len(objects)
        everything += objects
    kinds = {o["kind"] for o in everything}
    assert {"ScaledObject", "ServiceMonitor", "PodMonitor", "Deployment", "NetworkPolicy"} <= kinds, kinds

    # The check can fail: each broken copy of a rendered object must be rejected, for the reason given.
    objects = by_name(everything)
    broken = []

    def breaking(key, change, reason):
        item = copy.deepcopy(objects[key])
        change(item)
        broken.append((item, reason))

    pod = lambda o: o["spec"]["template"]["spec"]
    breaking(("Deployment", "zoetrope-worker"),
             lambda o: pod(o)["containers"][0].update(readinesProbe={"grpc": {"port": 1}}),
             "unknown field /spec/template/spec/containers/0/readinesProbe")
    breaking(("Deployment", "zoetrope-worker"),
             lambda o: pod(o)["containers"][0]["resources"]["limits"].update({"nvidia.com/gpu": "four"}),
             "nvidia.com~1gpu must match format \"quantity\"")
    breaking(("Deployment", "zoetrope-scheduler"),
             lambda o: pod(o)["containers"][0]["readinessProbe"]["grpc"].update(port="grpc"),
             "grpc/port must be integer")
    breaking(("ScaledObject", "zoetrope-worker"), lambda o: o["spec"].pop("triggers"),
             "must have required property triggers")
    breaking(("ScaledObject", "zoetrope-worker"),
             lambda o: o["spec"]["triggers"][0]["metadata"].update(threshold=2), "threshold must be string")
    breaking(("ServiceMonitor", "zoetrope-scheduler"),
             lambda o: o["spec"]["endpoints"][0].update(prot="metrics"), "unknown field /spec/endpoints/0/prot")
    breaking(("PodMonitor", "zoetrope-worker"), lambda o: o["spec"].pop("selector"),
             "must have required property selector")
    unknown_kind = copy.deepcopy(objects[("ScaledObject", "zoetrope-worker")])
    unknown_kind["kind"] = "ScaledThing"
    broken.append((unknown_kind, "no schema for keda.sh/v1alpha1 ScaledThing"))
    for item, reason in broken:
        result = validate(node, validator, [item])
        assert result.returncode == 1 and reason in result.stdout, f"not rejected for {reason}:\n{result.stdout}"
    print(f"schemas: {total} objects of {len(kustomizations(root))} kustomizations valid "
          f"({', '.join(sorted(kinds))}); {len(broken)} broken objects rejected")


def check_compare(render, root):
    engine = "kubectl" if shutil.which("kubectl") else "kustomize" if shutil.which("kustomize") else None
    if engine is None:
        print("SKIP: neither kubectl nor kustomize is installed: nothing to compare the builtin renderer with")
        sys.exit(SKIP)
    for kustomization in kustomizations(root):
        reference = by_name(render.render(kustomization, engine)[1])
        builtin = by_name(render.render(kustomization, "builtin")[1])
        for key in sorted(set(reference) | set(builtin)):
            assert reference.get(key) == builtin.get(key), \
                f"{kustomization} {key}:\n{engine}: {reference.get(key)}\nbuiltin: {builtin.get(key)}"
    print(f"builtin renderer: every kustomization renders as with {engine}")


def main():
    root = os.path.abspath(sys.argv[1])
    sys.path.insert(0, root)
    import render  # deploy/kubernetes/render.py

    if sys.argv[2:3] == ["--schemas"]:
        check_schemas(render, root, sys.argv[3])
    elif sys.argv[2:] == ["--compare"]:
        check_compare(render, root)
    else:
        check_structure(render, root)


if __name__ == "__main__":
    main()
