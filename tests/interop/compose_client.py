#!/usr/bin/env python3
"""The docker-compose app's EPP client: real cisagov/epplib, set up the way getgov sets it up.

It is what the compose file's `app` service runs, and what scripts/compose-smoke.sh runs on the
host through eppmux's published port. It uses only epplib's public API (SocketTransport, Client,
the command classes); trust comes from SSL_CERT_FILE, exactly as in epplib (certificate
verification on, host name checked).

  session         login, check, create, info, delete, poll, logout (1000 … 1300, 1500);
                  then the connection must be closed by the server.
  wrong-password  login with a password that is not the configured one; expects 2200 and no
                  session (a command after it gets 2002).

Prints one `OK <step> <code>` line per step; on anything unexpected, one `FAIL <why>` line and
exit status 1. The password is read from a file (the compose secret), never from the command line.

Usage: compose_client.py {session|wrong-password} HOST PORT CLID PASSWORD_FILE DOMAIN
"""
import sys
from dataclasses import dataclass
from types import SimpleNamespace


def fail(msg):
    print(f"FAIL {msg}", flush=True)
    sys.exit(1)


try:
    from epplib import constants
except ImportError:
    fail("epplib is not installed: python3 -m pip install <cisagov/epplib archive or git URL>")

# getgov's src/epplibwrapper/__init__.py: epplib defaults to FRED's namespaces; the IETF ones must
# be set before epplib.commands is imported (the command classes read them at import time).
constants.NAMESPACE = SimpleNamespace(
    EPP="urn:ietf:params:xml:ns:epp-1.0",
    SEC_DNS="urn:ietf:params:xml:ns:secDNS-1.1",
    XSI="http://www.w3.org/2001/XMLSchema-instance",
    FRED="noop",
    NIC_CONTACT="urn:ietf:params:xml:ns:contact-1.0",
    NIC_DOMAIN="urn:ietf:params:xml:ns:domain-1.0",
    NIC_ENUMVAL="noop",
    NIC_EXTRA_ADDR="noop",
    NIC_HOST="urn:ietf:params:xml:ns:host-1.0",
    NIC_KEYSET="noop",
    NIC_NSSET="noop",
)
constants.SCHEMA_LOCATION = SimpleNamespace(
    XSI="urn:ietf:params:xml:ns:epp-1.0 epp-1.0.xsd",
    FRED="noop fred-1.5.0.xsd",
    SEC_DNS="urn:ietf:params:xml:ns:secDNS-1.1 secDNS-1.1.xsd",
    NIC_CONTACT="urn:ietf:params:xml:ns:contact-1.0 contact-1.0.xsd",
    NIC_DOMAIN="urn:ietf:params:xml:ns:domain-1.0 domain-1.0.xsd",
    NIC_ENUMVAL="noop enumval-1.2.0.xsd",
    NIC_EXTRA_ADDR="noop extra-addr-1.0.0.xsd",
    NIC_HOST="urn:ietf:params:xml:ns:host-1.0 host-1.0.xsd",
    NIC_KEYSET="noop keyset-1.3.2.xsd",
    NIC_NSSET="noop nsset-1.2.2.xsd",
)

from epplib import commands  # noqa: E402  (after the namespace override, on purpose)
from epplib.client import Client  # noqa: E402
from epplib.exceptions import TransportError  # noqa: E402
from epplib.models import DomainAuthInfo  # noqa: E402
from epplib.responses import Result  # noqa: E402
from epplib.transport import SocketTransport  # noqa: E402
from lxml.etree import Element, QName  # noqa: E402

DOMAIN_NS = constants.NAMESPACE.NIC_DOMAIN


@dataclass
class PollRequest(commands.base.Command):
    """`<poll op="req"/>`. epplib has no poll command of its own; an application that polls adds
    one like this, through epplib's Command base class (epplib builds the frame and the clTRID)."""

    response_class = Result

    def _get_command_payload(self):
        poll = Element(QName(constants.NAMESPACE.EPP, "poll"))
        poll.set("op", "req")
        return poll


class Steps:
    def __init__(self, client):
        self.client = client

    def run(self, label, command, want):
        try:
            response = self.client.send(command)
        except TransportError as e:
            fail(f"{label}: {type(e).__name__}: {e}")
        if response.code != want:
            fail(f"{label}: code {response.code} ({response.msg!r}), wanted {want}")
        print(f"OK {label} {response.code}", flush=True)
        return response


def connect(host, port):
    client = Client(SocketTransport(host, port))
    try:
        client.connect()
    except (OSError, TransportError) as e:
        fail(f"connect to {host}:{port}: {type(e).__name__}: {e}")
    if client.greeting is None:
        fail("no greeting")
    print(f"OK greeting from {client.greeting.sv_id!r}", flush=True)
    return client


def login(clid, password):
    return commands.Login(cl_id=clid, password=password, obj_uris=[DOMAIN_NS])


def session(host, port, clid, password, name):
    client = connect(host, port)
    steps = Steps(client)
    steps.run("login", login(clid, password), 1000)
    check = steps.run("check", commands.CheckDomain(names=[name]), 1000)
    if not check.res_data or not check.res_data[0].avail:
        fail(f"check: {name} should be available, got {check.res_data!r}")
    steps.run(
        "create",
        commands.CreateDomain(
            name=name, registrant="compose-smoke", auth_info=DomainAuthInfo(pw="2fooBAR123fooBaz")
        ),
        1000,
    )
    info = steps.run("info", commands.InfoDomain(name=name), 1000)
    if not info.res_data or info.res_data[0].name != name:
        fail(f"info: wanted {name}, got {info.res_data!r}")
    steps.run("delete", commands.DeleteDomain(name=name), 1000)
    steps.run("poll", PollRequest(), 1300)
    steps.run("logout", commands.Logout(), 1500)
    # eppmux closes the connection after 1500, as a registry does: the next read sees EOF.
    try:
        client.transport.receive()
    except TransportError:
        print("OK closed", flush=True)
    else:
        fail("logout: the connection should be closed after 1500")
    client.close()


def wrong_password(host, port, clid, password, name):
    client = connect(host, port)
    steps = Steps(client)
    steps.run("login with a wrong password", login(clid, password + "-wrong"), 2200)
    steps.run("check without a session", commands.CheckDomain(names=[name]), 2002)
    client.close()


def main():
    if len(sys.argv) != 7 or sys.argv[1] not in ("session", "wrong-password"):
        fail(__doc__.strip().splitlines()[-1])
    mode, host, port, clid, password_file, name = sys.argv[1:]
    try:
        with open(password_file, encoding="utf-8") as f:
            password = f.read().strip()
    except OSError as e:
        fail(f"password file: {e}")
    (session if mode == "session" else wrong_password)(host, int(port), clid, password, name)


if __name__ == "__main__":
    main()
