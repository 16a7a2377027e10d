#!/usr/bin/env node
// Validates rendered Kubernetes objects against the schemas of the kubernetes-models packages:
// Kubernetes 1.27 (kubernetes-models), KEDA (@kubernetes-models/keda) and prometheus-operator
// (@kubernetes-models/prometheus-operator), pinned in package-lock.json.
//
//   node validate.js OBJECTS.json       (a JSON array of objects, as `render.py --output json` writes)
//
// Prints one line per object and exits 1 when any object fails. An object fails when
//  - no package has a schema for its apiVersion and kind (every object must be checked by something),
//  - the schema rejects it (types, required fields, enums, formats such as quantities), or
//  - it holds a field the schema does not define. The packages' schemas allow unknown fields, as the
//    OpenAPI documents they come from do, but the API server rejects them (kubectl's strict field
//    validation) and a CRD's structural schema silently prunes them, so a misspelled `readinesProbe`
//    would otherwise pass. The generated validators read every property their schema defines and
//    enumerate the keys of free-form maps; validating a Proxy that records those reads tells which
//    fields of the object no schema looked at.
"use strict";

const fs = require("fs");

const PACKAGES = ["kubernetes-models", "@kubernetes-models/keda", "@kubernetes-models/prometheus-operator"];

function modelClass(apiVersion, kind) {
  for (const pkg of PACKAGES) {
    let group;
    try {
      group = require(`${pkg}/${apiVersion}`);
    } catch (error) {
      // This package has no such group/version (the package itself missing is an install error).
      const missingSubpath = error.code === "ERR_PACKAGE_PATH_NOT_EXPORTED" ||
        (error.code === "MODULE_NOT_FOUND" && !String(error.message).includes(`'${pkg}'`));
      if (missingSubpath) continue;
      throw error;
    }
    if (group[kind]) return group[kind];
  }
  return null;
}

// A Proxy of VALUE whose property reads and key enumerations are recorded under PATH.
function track(value, path, reads, enumerated) {
  if (value === null || typeof value !== "object") return value;
  const read = new Set();
  reads.set(path, read);
  const children = new Map();
  return new Proxy(value, {
    get(target, key) {
      if (typeof key !== "string" || !Object.prototype.hasOwnProperty.call(target, key)) return target[key];
      read.add(key);
      if (!children.has(key)) children.set(key, track(target[key], `${path}/${key}`, reads, enumerated));
      return children.get(key);
    },
    has(target, key) {
      if (typeof key === "string") read.add(key);
      return key in target;
    },
    ownKeys(target) {
      enumerated.add(path);
      return Reflect.ownKeys(target);
    },
  });
}

function unreadFields(value, path, reads, enumerated, found) {
  if (value === null || typeof value !== "object") return;
  for (const key of Object.keys(value)) {
    const child = `${path}/${key}`;
    if (!enumerated.has(path) && !(reads.get(path) || new Set()).has(key)) found.push(child);
    else unreadFields(value[key], child, reads, enumerated, found);
  }
}

// The problems of one object (empty when it is valid).
function check(object) {
  if (object.kind === "Secret" && object.data) {
    // kustomize writes long base64 values in lines of 70; the API server's base64 decoder (Go's) skips
    // line breaks, the schema's "byte" format does not, so the breaks are removed before checking.
    object = { ...object, data: Object.fromEntries(
      Object.entries(object.data).map(([key, value]) => [key, String(value).replace(/[\r\n]/g, "")])) };
  }
  const Model = modelClass(object.apiVersion, object.kind);
  if (!Model) return [`no schema for ${object.apiVersion} ${object.kind}`];
  const reads = new Map();
  const enumerated = new Set();
  try {
    // The model's validate() runs the generated schema validator on `this` and throws on errors.
    Model.prototype.validate.call(track(object, "", reads, enumerated));
  } catch (error) {
    return [`schema: ${error.message}`];
  }
  const unknown = [];
  unreadFields(object, "", reads, enumerated, unknown);
  return unknown.map((field) => `unknown field ${field}`);
}

function main() {
  if (process.argv.length !== 3) {
    console.error("usage: node validate.js OBJECTS.json");
    process.exit(2);
  }
  const objects = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  let failures = 0;
  for (const object of objects) {
    const name = `${object.kind}/${object.metadata && object.metadata.name}`;
    const problems = check(object);
    if (problems.length === 0) {
      console.log(`ok      ${object.apiVersion} ${name}`);
    } else {
      failures++;
      for (const problem of problems) console.log(`INVALID ${object.apiVersion} ${name}: ${problem}`);
    }
  }
  console.log(`${objects.length - failures}/${objects.length} objects valid`);
  process.exit(failures === 0 ? 0 : 1);
}

main();
