#!/usr/bin/env python3
"""Checks the Cloud Foundry manifest fragment for the eppmux sidecar without a Cloud Foundry:
its YAML structure, the keys Cloud Foundry documents for a sidecar (name, process_types, command,
memory: nothing else), and that the pieces agree with each other and with this directory — the
scripts the commands name exist and are executable, the app connects where eppmux listens, and
eppmux listens on a loopback port a non-root process may bind.

Usage: check-manifest.py [MANIFEST]   (default: manifest-eppmux.yml beside this script)
Exits 1 with one line per problem.
"""
import ipaddress
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SIDECAR_KEYS = {"name", "process_types", "command", "memory"}
# Cloud Foundry's memory sizes: a number and M, MB, G or GB.
MEMORY = re.compile(r"^[1-9][0-9]*(M|MB|G|GB)$", re.IGNORECASE)


def script_of(command):
    """./eppmux/X.sh in the app directory is deploy/cloudfoundry/X.sh here."""
    first = command.split()[0]
    if not first.startswith("./eppmux/"):
        return None
    return os.path.join(HERE, first[len("./eppmux/"):])


def host_port(value):
    host, _, port = str(value).rpartition(":")
    return host, int(port)


def check(doc):
    errors = []
    apps = doc.get("applications") if isinstance(doc, dict) else None
    if not isinstance(apps, list) or len(apps) != 1 or not isinstance(apps[0], dict):
        return ["applications: expected a list with the one getgov application"]
    app = apps[0]
    env = app.get("env") or {}
    sidecars = app.get("sidecars")
    if not isinstance(sidecars, list) or not sidecars:
        return ["sidecars: expected a list with the eppmux sidecar"]
    for i, sidecar in enumerate(sidecars):
        where = f"sidecars[{i}]"
        if not isinstance(sidecar, dict):
            errors.append(f"{where}: not a mapping")
            continue
        for key in sorted(set(sidecar) - SIDECAR_KEYS):
            errors.append(f"{where}: unknown key {key!r} (a sidecar has {', '.join(sorted(SIDECAR_KEYS))})")
        for key in ("name", "process_types", "command"):
            if key not in sidecar:
                errors.append(f"{where}: {key} is required")
        if not isinstance(sidecar.get("name", ""), str) or not sidecar.get("name"):
            errors.append(f"{where}.name: a non-empty string")
        types = sidecar.get("process_types")
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types) or "web" not in types:
            errors.append(f"{where}.process_types: a list of process types that includes web")
        command = sidecar.get("command")
        if not isinstance(command, str) or not command.strip():
            errors.append(f"{where}.command: a non-empty string")
        else:
            script = script_of(command)
            if script is None or not os.access(script, os.X_OK):
                errors.append(f"{where}.command: {command!r} names no executable script of deploy/cloudfoundry/")
        if "memory" in sidecar and not MEMORY.match(str(sidecar["memory"])):
            errors.append(f"{where}.memory: {sidecar['memory']!r} is not a size like 64M or 1G")
    command = app.get("command")
    if not isinstance(command, str) or len(command.split()) < 2 or script_of(command) is None \
            or not os.access(script_of(command), os.X_OK):
        errors.append("command: the web command should be wrapped: ./eppmux/web.sh ./run.sh")
    try:
        host, port = host_port(env.get("EPPMUX_LISTEN_TLS", "127.0.0.1:1700"))
        if not ipaddress.ip_address(host).is_loopback:
            errors.append(f"env.EPPMUX_LISTEN_TLS: {host} is not a loopback address")
        if port < 1024:
            errors.append(f"env.EPPMUX_LISTEN_TLS: port {port} needs root; a sidecar is not root")
        if str(env.get("EPP_PORT")) != str(port):
            errors.append(f"env.EPP_PORT: {env.get('EPP_PORT')!r}, but eppmux listens on port {port}")
    except ValueError as e:
        errors.append(f"env.EPPMUX_LISTEN_TLS: {e}")
    if env.get("EPP_HOSTNAME") not in ("localhost", "127.0.0.1"):
        errors.append("env.EPP_HOSTNAME: localhost (a name in the listener certificate)")
    try:
        host, _ = host_port(env.get("EPPMUX_ADMIN", "127.0.0.1:1790"))
        if not ipaddress.ip_address(host).is_loopback:
            errors.append(f"env.EPPMUX_ADMIN: {host} is not a loopback address")
    except ValueError as e:
        errors.append(f"env.EPPMUX_ADMIN: {e}")
    for key in env:
        if re.search(r"PASSWORD|PASSPHRASE|_KEY_PEM|^REGISTRY_KEY$", key):
            errors.append(f"env.{key}: a secret does not belong in the manifest; keep it in the credentials service")
    return errors


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "manifest-eppmux.yml")
    with open(path) as f:
        doc = yaml.safe_load(f)
    errors = check(doc)
    if errors:
        print("\n".join(f"{path}: {e}" for e in errors))
        return 1
    sidecars = doc["applications"][0]["sidecars"]
    print(f"{path}: ok ({len(sidecars)} sidecar(s): {', '.join(s['name'] for s in sidecars)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
