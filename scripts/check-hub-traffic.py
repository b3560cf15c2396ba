#!/usr/bin/env python3
"""Checks recorded HubEE traffic against the official OpenAPI spec (api_folder v1.2.7).

usage: check-hub-traffic.py SPEC.yaml TRAFFIC.json

TRAFFIC.json is a list of requests as fake-hubee recorded them: {"method", "path", "query",
"headers": [[name, value]…], "body": JSON or null}. For each request to the API (the token
endpoint is OAuth2, outside the spec) it checks that:
  - the path matches a path of the spec and the method (or, on a POST, its
    X-HTTP-Method-Override) one of its operations;
  - path parameters match their schema (uuid format included);
  - query parameters are declared and of their type;
  - header parameters (editorName, applicationName, softwareVersion, digest,
    X-HTTP-Method-Override) match their schema;
  - a JSON body is valid against the operation's request schema (OpenAPI 3.0: nullable,
    readOnly properties neither required nor to be sent), and its Content-Type is one the
    operation accepts.

The gaps PROTOCOL §10 documents are allowed and listed in GAPS. Exit 0 when every request
passes, 1 with one line per violation otherwise, 2 on bad usage.
"""

import json
import re
import sys
import urllib.parse

try:
    import jsonschema
    import yaml
except ImportError as e:  # pragma: no cover
    print(f"check-hub-traffic: {e}; install python3-yaml and python3-jsonschema (or pip install pyyaml jsonschema)", file=sys.stderr)
    sys.exit(2)

BASE = "/teledossiers/v1"

# Deliberate departures from the spec, each documented in PROTOCOL §10 (README "The official
# schema"): (method, path template, kind, name).
GAPS = {
    # §10.6: eventDetails is documented in [CI] and always sent by [PY], absent from [OAS].
    ("GET", "/notifications", "query", "eventDetails"),
}

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def resolve(spec, node):
    """Inlines every $ref (the spec has no recursive schema)."""
    if isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            target = spec
            for part in ref.lstrip("#/").split("/"):
                target = target[part]
            return resolve(spec, target)
        return {k: resolve(spec, v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(spec, v) for v in node]
    return node


def to_json_schema(s, request=True):
    """OpenAPI 3.0 schema → JSON Schema (draft 4/7): nullable, readOnly, allOf."""
    if isinstance(s, list):
        return [to_json_schema(x, request) for x in s]
    if not isinstance(s, dict):
        return s
    out = {}
    for k, v in s.items():
        if k in ("example", "examples", "description", "readOnly", "writeOnly", "xml", "nullable", "deprecated"):
            continue
        if k == "properties":
            props = {}
            for name, p in v.items():
                if request and isinstance(p, dict) and p.get("readOnly"):
                    # A readOnly property must not be sent.
                    props[name] = {"not": {}}
                else:
                    props[name] = to_json_schema(p, request)
            out[k] = props
        elif k == "required":
            props = s.get("properties", {})
            out[k] = [r for r in v if not (request and isinstance(props.get(r), dict) and props[r].get("readOnly"))]
        else:
            out[k] = to_json_schema(v, request)
    if s.get("nullable"):
        if "type" in out:
            t = out["type"]
            out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
        if "allOf" in out:
            out = {"anyOf": [{"type": "null"}, out]}
    return out


def template_regex(template):
    names = re.findall(r"\{(\w+)\}", template)
    pattern = "^" + re.sub(r"\\\{\w+\\\}", "([^/]+)", re.escape(template)) + "$"
    return re.compile(pattern), names


def check_value(kind, name, value, schema, errors, where):
    schema = schema or {}
    t = schema.get("type")
    if t == "string" and schema.get("format") == "uuid" and not UUID.match(value):
        errors.append(f"{where}: {kind} {name} {value!r} is not a UUID")
    if t == "string" and "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{where}: {kind} {name} is {len(value)} characters, more than {schema['maxLength']}")
    if t == "string" and "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {kind} {name} {value!r} is not one of {schema['enum']}")
    if t in ("number", "integer"):
        try:
            float(value)
        except ValueError:
            errors.append(f"{where}: {kind} {name} {value!r} is not a {t}")
    if t == "boolean" and value not in ("true", "false"):
        errors.append(f"{where}: {kind} {name} {value!r} is not a boolean")
    if t == "array":
        for v in value.split(","):
            check_value(kind, name, v, schema.get("items"), errors, where)


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    with open(argv[2], encoding="utf-8") as f:
        traffic = json.load(f)
    paths = []
    for template, item in spec["paths"].items():
        item = resolve(spec, item)
        regex, names = template_regex(template)
        paths.append((template, regex, names, item))
    errors = []
    checked = 0
    for i, r in enumerate(traffic):
        path = r["path"]
        if not path.startswith(BASE):
            continue  # the token endpoint (OAuth2, PROTOCOL §2) is outside the spec
        rel = path[len(BASE):]
        headers = {k.lower(): v for k, v in r.get("headers", [])}
        method = r["method"].upper()
        override = headers.get("x-http-method-override")
        where = f"request {i} {method} {rel}"
        found = None
        for template, regex, names, item in paths:
            m = regex.match(rel)
            if m:
                found = (template, dict(zip(names, m.groups())), item)
                break
        if not found:
            errors.append(f"{where}: no such path in the spec")
            continue
        template, path_values, item = found
        op = item.get(method.lower())
        if op is None:
            errors.append(f"{where}: {template} has no {method} operation")
            continue
        checked += 1
        params = {}
        for p in item.get("parameters", []) + op.get("parameters", []):
            params[(p["in"], p["name"].lower() if p["in"] == "header" else p["name"])] = p
        for name, value in path_values.items():
            p = params.get(("path", name))
            check_value("path parameter", name, urllib.parse.unquote(value), p and p.get("schema"), errors, where)
        for name, value in urllib.parse.parse_qsl(r.get("query", ""), keep_blank_values=True):
            p = params.get(("query", name))
            if p is None:
                if (method, template, "query", name) not in GAPS:
                    errors.append(f"{where}: query parameter {name} is not in the spec")
                continue
            check_value("query parameter", name, value, p.get("schema"), errors, where)
        for (loc, name), p in params.items():
            if loc == "header" and name in headers:
                check_value("header", p["name"], headers[name], p.get("schema"), errors, where)
            if loc in ("header", "query") and p.get("required") and name not in headers and loc == "header":
                errors.append(f"{where}: required header {p['name']} is missing")
        body = op.get("requestBody")
        ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if body:
            content = body.get("content", {})
            if ctype and ctype not in content:
                errors.append(f"{where}: Content-Type {ctype} is not one of {sorted(content)}")
            media = content.get(ctype) or content.get("application/json")
            # A body is recorded once the hub parsed it; a request cut before (a fault) has none.
            if ctype == "application/json" and media and "schema" in media and r.get("body") is not None:
                schema = to_json_schema(media["schema"])
                v = jsonschema.Draft7Validator(schema)
                for e in v.iter_errors(r.get("body")):
                    loc = "/".join(str(x) for x in e.absolute_path) or "(body)"
                    errors.append(f"{where}: body {loc}: {e.message}")
        elif r.get("body") is not None:
            errors.append(f"{where}: {template} {method} takes no body")
        if override and method != "POST":
            errors.append(f"{where}: X-HTTP-Method-Override on a {method}")
    for e in errors:
        print(e)
    print(f"check-hub-traffic: {checked} request(s) checked, {len(errors)} violation(s)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
