#!/usr/bin/env python3
"""Prints one docker-compose service's image, command, environment, volumes, secrets and
dependencies as JSON, with the secrets resolved to their files, so that tests can run exactly what
the compose file runs. Values are as written in the file: `$$` is not yet unescaped.

Usage: scripts/compose-service.py docker-compose.yml SERVICE
"""
import json
import sys

import yaml

path, name = sys.argv[1], sys.argv[2]
doc = yaml.safe_load(open(path))
svc = doc["services"][name]
env = svc.get("environment") or {}
if isinstance(env, list):
    env = dict(item.split("=", 1) for item in env)
secrets = {}
for s in svc.get("secrets") or []:
    src = s if isinstance(s, str) else s["source"]
    target = f"/run/secrets/{src if isinstance(s, str) else s.get('target', src)}"
    secrets[target] = doc["secrets"][src]["file"]
depends = svc.get("depends_on") or {}
if isinstance(depends, list):
    depends = {d: {"condition": "service_started"} for d in depends}
print(json.dumps({
    "image": svc.get("image"),
    "depends_on": {d: (c or {}).get("condition", "service_started") for d, c in depends.items()},
    "command": [str(a) for a in svc.get("command") or []],
    "environment": {k: str(v) for k, v in env.items()},
    "volumes": svc.get("volumes") or [],
    "secrets": secrets,
}))
