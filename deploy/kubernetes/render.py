#!/usr/bin/env python3
"""Renders a Kustomize folder of deploy/kubernetes the way `kubectl kustomize` does.

  render.py [--engine auto|kubectl|kustomize|builtin] [--output yaml|json] FOLDER

`auto` uses `kubectl kustomize` when kubectl is on PATH, else `kustomize build`, else the builtin renderer
below. The builtin renderer exists because Debian 12 ships neither a current kubectl nor kustomize (its
kubernetes-client 1.20 embeds a kustomize too old for these files), and CI must render on a fresh Debian
machine without downloads. It implements only what deploy/kubernetes uses and refuses everything else
with an error naming the field, so a kustomization that outgrows it fails loudly instead of rendering
differently. tests/deploy/kustomize_test.py --compare checks that it renders every folder of
deploy/kubernetes to exactly what kubectl renders, wherever kubectl exists.

Implemented (kustomize v5 semantics):
  resources (files of YAML documents, and folders holding a kustomization), namespace,
  labels (pairs only: metadata.labels, not selectors or templates),
  secretGenerator (files, literals, type) with the content-hash name suffix and the references to the
  generated names in pod templates, generatorOptions.disableNameSuffixHash,
  patches given inline or by path as JSON 6902 operations (add, replace, remove) on a target kind/name.
"""

import argparse
import base64
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# Kinds without a namespace among those a deployment like ours could hold; everything else gets one.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass", "RuntimeClass", "IngressClass",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "ClusterTriggerAuthentication"}


class Unsupported(Exception):
    """A kustomization uses something the builtin renderer does not implement."""


def builtin_render(folder):
    """The objects FOLDER's kustomization renders to, in kustomize's order of resources then generators."""
    path = next((os.path.join(folder, name) for name in KUSTOMIZATION_FILES
                 if os.path.isfile(os.path.join(folder, name))), None)
    if path is None:
        raise Unsupported(f"{folder}: no kustomization.yaml")
    spec = yaml.safe_load(open(path)) or {}
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "secretGenerator", "generatorOptions",
             "patches"}
    for key in spec:
        if key not in known:
            raise Unsupported(f"{path}: field '{key}' is not implemented by the builtin renderer")

    objects = []
    for resource in spec.get("resources", []):
        location = os.path.join(folder, resource)
        if os.path.isdir(location):
            objects.extend(builtin_render(location))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(open(location)) if doc)

    options = spec.get("generatorOptions", {})
    for key in options:
        if key != "disableNameSuffixHash":
            raise Unsupported(f"{path}: generatorOptions.{key} is not implemented")
    renamed = {}
    for generator in spec.get("secretGenerator", []):
        secret = generate_secret(folder, path, generator)
        if not options.get("disableNameSuffixHash", False):
            original = secret["metadata"]["name"]
            secret["metadata"]["name"] = f"{original}-{secret_hash(secret)}"
            renamed[original] = secret["metadata"]["name"]
        objects.append(secret)

    for patch in spec.get("patches", []):
        apply_patch(folder, path, patch, objects)

    if "namespace" in spec:
        for item in objects:
            if item["kind"] not in CLUSTER_SCOPED:
                item.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        for key in label:
            if key != "pairs":
                raise Unsupported(f"{path}: labels[].{key} is not implemented (only pairs on metadata.labels)")
        for item in objects:
            item.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for item in objects:
        rename_secret_references(item, renamed)
    return objects


def generate_secret(folder, path, generator):
    for key in generator:
        if key not in ("name", "files", "literals", "type"):
            raise Unsupported(f"{path}: secretGenerator field '{key}' is not implemented")
    data = {}
    for entry in generator.get("files", []):
        key, _, source = entry.rpartition("=")
        key = key or os.path.basename(source)
        data[key] = wrapped_base64(open(os.path.join(folder, source), "rb").read())
    for entry in generator.get("literals", []):
        key, _, value = entry.partition("=")
        data[key] = wrapped_base64(value.encode())
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": generator["name"]},
            "type": generator.get("type", "Opaque"), "data": data}


def wrapped_base64(raw):
    """Base64 as kustomize writes it: values over 70 characters in lines of 70, each ending in a newline."""
    text = base64.b64encode(raw).decode()
    if len(text) <= 70:
        return text
    return "".join(text[i:i + 70] + "\n" for i in range(0, len(text), 70))


def secret_hash(secret):
    """kustomize's name suffix of a generated Secret: the first 10 hex digits of the SHA-256 of its kind,
    type and data (its name is left empty in the hash), with 0 1 3 a e spelled g h k m t so that the suffix
    never reads as a number."""
    encoded = json.dumps({"data": secret["data"], "kind": "Secret", "name": "", "type": secret["type"]},
                         sort_keys=True, separators=(",", ":"))
    # Go's encoding/json escapes these; kustomize hashes Go's bytes.
    encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def rename_secret_references(item, renamed):
    if not renamed:
        return
    pod = item.get("spec", {}).get("template", {}).get("spec")
    if pod is None:
        return
    for volume in pod.get("volumes", []):
        if "secret" in volume and volume["secret"].get("secretName") in renamed:
            volume["secret"]["secretName"] = renamed[volume["secret"]["secretName"]]
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference and reference.get("name") in renamed:
                reference["name"] = renamed[reference["name"]]
        for source in container.get("envFrom", []):
            reference = source.get("secretRef")
            if reference and reference.get("name") in renamed:
                reference["name"] = renamed[reference["name"]]


def apply_patch(folder, path, patch, objects):
    for key in patch:
        if key not in ("target", "patch", "path"):
            raise Unsupported(f"{path}: patches[].{key} is not implemented")
    target = patch.get("target", {})
    for key in target:
        if key not in ("kind", "name"):
            raise Unsupported(f"{path}: patch target field '{key}' is not implemented (kind and name only)")
    text = patch["patch"] if "patch" in patch else open(os.path.join(folder, patch["path"])).read()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise Unsupported(f"{path}: only JSON 6902 patches (a list of operations) are implemented")
    matched = [o for o in objects if all(o.get("kind") == target["kind"] if k == "kind" else
                                         o["metadata"].get("name") == target["name"] for k in target)]
    if not matched:
        raise ValueError(f"{path}: patch target {target} matches no object")
    for item in matched:
        for operation in operations:
            json_patch(item, operation)


def json_patch(document, operation):
    """One RFC 6902 add, replace or remove on DOCUMENT, in place."""
    op = operation["op"]
    if op not in ("add", "replace", "remove"):
        raise Unsupported(f"JSON patch op '{op}' is not implemented")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
    parent = document
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        else:
            del parent[index]
    else:
        if op in ("replace", "remove") and last not in parent:
            raise ValueError(f"JSON patch {op}: {operation['path']} does not exist")
        if op == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(operation["value"])


def render(folder, engine="auto"):
    """(engine used, list of objects) for FOLDER."""
    if engine == "auto":
        engine = "kubectl" if shutil.which("kubectl") else "kustomize" if shutil.which("kustomize") else "builtin"
    if engine == "builtin":
        return engine, builtin_render(folder)
    command = ["kubectl", "kustomize", folder] if engine == "kubectl" else ["kustomize", "build", folder]
    text = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout
    return engine, [doc for doc in yaml.safe_load_all(text) if doc]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("auto", "kubectl", "kustomize", "builtin"), default="auto")
    parser.add_argument("--output", choices=("yaml", "json"), default="yaml")
    parser.add_argument("folder")
    arguments = parser.parse_args()
    try:
        engine, objects = render(arguments.folder, arguments.engine)
    except Unsupported as error:
        sys.exit(f"render.py: {error}; render with kubectl kustomize instead")
    print(f"render.py: rendered {arguments.folder} with {engine}", file=sys.stderr)
    if arguments.output == "json":
        json.dump(objects, sys.stdout, indent=1)
        print()
    else:
        yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
