#!/usr/bin/env python3
"""A getgov-shaped client of eppmux, built on the real cisagov/epplib and gevent.

getgov (cisagov/manage.get.gov) runs gunicorn with 3 gevent workers; each worker holds its own
pool of logged-in epplib connections (EPP_CONNECTION_POOL_SIZE, 5 in production) shared by the
greenlets serving requests, retries a command up to 4 attempts on transport errors, 2400-2502 and
2002 "Registrar is not logged in.", and is recycled after --max-requests requests. This script
reproduces that shape (not getgov's code) against eppmux:

  * the master runs WORKERS worker processes at a time and starts a new one whenever one exits,
    until TOTAL requests were served; each worker serves at most MAX_REQUESTS requests and exits,
    as gunicorn's --max-requests recycles it;
  * a worker monkey-patches with gevent, fills a LIFO pool of POOL connections (connect, greeting,
    <login>: what eppmux answers locally), and runs GREENLETS greenlets that take requests until the
    worker's share is done, then logs out of every pooled connection;
  * a request is check / create / info / delete / poll / hello on a name no other request uses;
    every answer must carry the request's own clTRID (a fresh one per attempt) and name.

Every retry and every failed check is counted and reported; with no faults injected the caller
expects none (getgov re-sends a create after a transport error, which would end in 2302).

Environment: EPP_HOSTNAME, EPP_PORT (as getgov's one-line change reads them), SSL_CERT_FILE
(trust for eppmux's certificate), and REGISTRY_CL_ID, REGISTRY_PASSWORD where getgov's settings
read them: the user-provided service getgov-credentials in VCAP_SERVICES, else the environment.

Usage: getgov_workers.py --total N [--workers 3] [--pool 5] [--greenlets 10] [--max-requests N]
Prints one "WORKER {json}" line per worker process and a final "TOTAL {json}"; exits 1 if any
command failed.
"""
import sys

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    # Before socket and ssl are imported anywhere, as gunicorn's gevent worker does.
    from gevent import monkey

    monkey.patch_all()

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import threading

EPP = "urn:ietf:params:xml:ns:epp-1.0"
DOMAIN = "urn:ietf:params:xml:ns:domain-1.0"


def set_ietf_namespaces():
    """epplib defaults to FRED's namespaces; getgov points them at the IETF ones first."""
    from types import SimpleNamespace

    from epplib import constants

    constants.NAMESPACE = SimpleNamespace(
        **{
            **vars(constants.NAMESPACE),
            "NIC_CONTACT": "urn:ietf:params:xml:ns:contact-1.0",
            "NIC_DOMAIN": DOMAIN,
            "NIC_HOST": "urn:ietf:params:xml:ns:host-1.0",
        }
    )
    constants.SCHEMA_LOCATION = SimpleNamespace(
        **{
            **vars(constants.SCHEMA_LOCATION),
            "NIC_CONTACT": "urn:ietf:params:xml:ns:contact-1.0 contact-1.0.xsd",
            "NIC_DOMAIN": f"{DOMAIN} domain-1.0.xsd",
            "NIC_HOST": "urn:ietf:params:xml:ns:host-1.0 host-1.0.xsd",
        }
    )


def secret(key):
    """getgov's settings: the getgov-credentials service's credentials if it exists, else env."""
    for instances in json.loads(os.environ.get("VCAP_SERVICES", "{}")).values():
        for instance in instances:
            if instance.get("name") == "getgov-credentials":
                return instance["credentials"][key]
    return os.environ[key]


class CommandFailed(Exception):
    def __init__(self, code, msg):
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg


def retryable(code, msg):
    """getgov's rule: transport/connection errors (no code), 2400-2500, 2501-2502, and 2002 only
    when the registry says the session is not logged in."""
    if code is None:
        return True
    if 2400 <= code <= 2502:
        return True
    return code == 2002 and msg == "Registrar is not logged in."


def worker(wid, share, pool_size, greenlets):
    import gevent
    import gevent.queue
    from dataclasses import dataclass

    set_ietf_namespaces()
    from epplib.client import Client
    from epplib.commands import CheckDomain, Command, CreateDomain, DeleteDomain, Hello, InfoDomain, Login, Logout
    from epplib.exceptions import TransportError
    from epplib.models import Period, Unit
    from epplib.responses import Greeting, Result
    from epplib.transport import SocketTransport
    from lxml.etree import Element, QName

    @dataclass
    class PollRequest(Command):
        """epplib has no poll command at this commit; one through its public Command base."""

        response_class = Result

        def _get_command_payload(self):
            poll = Element(QName(EPP, "poll"))
            poll.set("op", "req")
            return poll

    class TimeoutSocketTransport(SocketTransport):
        """A read timeout after connecting, as getgov adds (epplib sets none)."""

        def connect(self):
            super().connect()
            self.socket.settimeout(5)

    host = os.environ.get("EPP_HOSTNAME", "localhost")
    port = int(os.environ.get("EPP_PORT", "700"))
    login = Login(cl_id=secret("REGISTRY_CL_ID"), password=secret("REGISTRY_PASSWORD"), obj_uris=[DOMAIN])
    stats = {"wid": wid, "pid": os.getpid(), "requests": 0, "commands": 0, "retries": 0,
             "failures": 0, "connections": 0, "errors": []}

    def note(kind, text):
        stats[kind] += 1
        if len(stats["errors"]) < 10:
            stats["errors"].append(text)

    def connect():
        client = Client(TimeoutSocketTransport(host, port))
        client.connect()
        response = client.send(login)
        if response.code != 1000:
            client.close()
            raise CommandFailed(response.code, response.msg)
        stats["connections"] += 1
        return client

    class Pool:
        """LIFO of logged-in clients; a client that raised a transport error is dropped."""

        def __init__(self):
            self.idle = gevent.queue.LifoQueue()
            self.created = 0
            for _ in range(pool_size):
                self.idle.put(connect())
                self.created += 1

        @contextlib.contextmanager
        def connection(self):
            if self.idle.empty() and self.created < pool_size:
                self.created += 1
                try:
                    client = connect()
                except Exception:
                    self.created -= 1
                    raise
            else:
                client = self.idle.get(timeout=10)
            try:
                yield client
            except TransportError:
                self.created -= 1
                with contextlib.suppress(Exception):
                    client.close()
                raise
            except BaseException:
                self.idle.put(client)
                raise
            else:
                self.idle.put(client)

        def close_all(self):
            while not self.idle.empty():
                client = self.idle.get()
                with contextlib.suppress(Exception):
                    client.send(Logout())
                    client.close()

    pool = Pool()
    tickets = itertools.count()

    def send(command, tr_id):
        """One command with getgov's retry rule; every retry is counted."""
        for attempt in range(1, 5):
            attempt_id = f"{tr_id}.{attempt}"
            try:
                with pool.connection() as client:
                    response = client.send(command, tr_id=attempt_id)
            except (TransportError, OSError, gevent.queue.Empty) as e:
                code, msg = None, f"{type(e).__name__}: {e}"
            else:
                if isinstance(response, Greeting) or response.code < 2000:
                    return attempt_id, response
                code, msg = response.code, response.msg
            if retryable(code, msg) and attempt < 4:
                note("retries", f"{tr_id} attempt {attempt}: {code} {msg}")
                gevent.sleep(attempt * 0.05)
                continue
            raise CommandFailed(code, msg)

    def request(g, i):
        name = f"gg{wid}-{os.getpid()}-{g}-{i}.gov"
        steps = [
            ("check", CheckDomain(names=[name]), 1000, True),
            ("create", CreateDomain(name=name, registrant="getgov-test", period=Period(1, Unit.YEAR)), 1000, True),
            ("info", InfoDomain(name=name), 1000, True),
            ("delete", DeleteDomain(name=name), 1000, False),
            ("poll", PollRequest(), 1300, False),
            ("hello", Hello(), None, False),
        ]
        for verb, command, want, named in steps:
            tr_id = f"{name}-{verb}"
            try:
                sent_id, response = send(command, tr_id)
            except CommandFailed as e:
                note("failures", f"{tr_id}: {e}")
                return
            stats["commands"] += 1
            if want is None:
                if not isinstance(response, Greeting):
                    note("failures", f"{tr_id}: not a greeting: {response!r}")
                continue
            if response.code != want or response.cl_tr_id != sent_id:
                note("failures", f"{tr_id}: code {response.code} clTRID {response.cl_tr_id!r}, wanted {want} {sent_id!r}")
            elif named:
                names = [getattr(r, "name", None) for r in (response.res_data or [])]
                if names != [name]:
                    note("failures", f"{tr_id}: answer names {names}, wanted [{name!r}]")
                elif verb == "check" and not response.res_data[0].avail:
                    note("failures", f"{tr_id}: {name} not available")
        stats["requests"] += 1

    def run(g):
        while True:
            i = next(tickets)
            if i >= share:
                return
            request(g, i)

    gevent.joinall([gevent.spawn(run, g) for g in range(greenlets)], raise_error=True)
    pool.close_all()
    print("WORKER " + json.dumps(stats), flush=True)


def master(args):
    lock = threading.Lock()
    left = [args.total]
    ids = itertools.count(1)
    lifetimes = []

    def slot():
        while True:
            with lock:
                share = min(args.max_requests, left[0])
                if share == 0:
                    return
                left[0] -= share
                wid = next(ids)
            out = subprocess.run(
                [sys.executable, __file__, "worker", str(wid), str(share), str(args.pool), str(args.greenlets)],
                capture_output=True, text=True,
            )
            line = next((l for l in out.stdout.splitlines() if l.startswith("WORKER ")), None)
            with lock:
                if out.returncode != 0 or line is None:
                    lifetimes.append({"wid": wid, "requests": 0, "commands": 0, "retries": 0, "failures": share,
                                      "connections": 0, "errors": [f"worker exited {out.returncode}: {out.stderr[-2000:]}"]})
                else:
                    lifetimes.append(json.loads(line[len("WORKER "):]))
                    print(line, flush=True)

    threads = [threading.Thread(target=slot) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = {k: sum(w[k] for w in lifetimes) for k in ("requests", "commands", "retries", "failures", "connections")}
    total["lifetimes"] = len(lifetimes)
    total["errors"] = [e for w in lifetimes for e in w["errors"]][:20]
    print("TOTAL " + json.dumps(total), flush=True)
    return 0 if total["failures"] == 0 else 1


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        wid, share, pool_size, greenlets = (int(a) for a in sys.argv[2:6])
        worker(wid, share, pool_size, greenlets)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total", type=int, required=True, help="requests over all workers")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--pool", type=int, default=5)
    p.add_argument("--greenlets", type=int, default=10)
    p.add_argument("--max-requests", type=int, default=1000, help="requests per worker before it is recycled")
    return master(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
