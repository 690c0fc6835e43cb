#!/usr/bin/env python3
"""Prints one docker-compose service's command, environment, volumes and secrets as JSON, with
the secrets resolved to their files, so that tests can run exactly what the compose file runs.

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
print(json.dumps({
    "command": [str(a) for a in svc.get("command") or []],
    "environment": {k: str(v) for k, v in env.items()},
    "volumes": svc.get("volumes") or [],
    "secrets": secrets,
}))
