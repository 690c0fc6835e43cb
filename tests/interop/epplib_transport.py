#!/usr/bin/env python3
"""Drives eppmux the way cisagov/epplib's SocketTransport does, with only the standard library.

epplib is not published on PyPI, so CI cannot install it; this script reproduces the parts of its
behaviour that a proxy can break, line for line in spirit:
  * TLS from ssl.create_default_context(): certificate verification on, trust from SSL_CERT_FILE,
    server_hostname = the host it connects to;
  * the header is read with ONE recv(4): a frame whose header is split across TLS records
    mis-frames it (here: a failure);
  * the body is read in recv(<=1024) chunks until complete: a connection cut mid-frame makes
    epplib spin forever (here: a failure);
  * lxml-style ns0: prefixes on every element of the commands it sends, and a 5 s read timeout.
It logs in, checks, creates, reads, deletes and logs out, printing one line per step.

Usage: SSL_CERT_FILE=certs-example/ca.pem epplib_transport.py HOST PORT CLID PASSWORD DOMAIN [CERT KEY]
"""
import socket
import ssl
import sys
import xml.etree.ElementTree as ET

EPP = "urn:ietf:params:xml:ns:epp-1.0"
DOMAIN = "urn:ietf:params:xml:ns:domain-1.0"


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def command(body, cltrid):
    return (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        f'<ns0:epp xmlns:ns0="{EPP}" xmlns:ns1="{DOMAIN}"><ns0:command>{body}'
        f"<ns0:clTRID>{cltrid}</ns0:clTRID></ns0:command></ns0:epp>"
    ).encode()


class Transport:
    def __init__(self, host, port, cert=None, key=None):
        context = ssl.create_default_context()
        if cert:
            context.load_cert_chain(certfile=cert, keyfile=key)
        sock = socket.create_connection((host, port), timeout=5)
        self.sock = context.wrap_socket(sock, server_hostname=host)

    def send(self, message):
        self.sock.sendall((len(message) + 4).to_bytes(4, "big") + message)

    def receive(self):
        header = self.sock.recv(4)
        if len(header) == 0:
            return None
        if len(header) != 4:
            fail(f"recv(4) returned {len(header)} bytes: the header was split across TLS records")
        expected = int.from_bytes(header, "big") - 4
        body = b""
        while len(body) < expected:
            chunk = self.sock.recv(min(1024, expected - len(body)))
            if not chunk:
                fail(f"connection closed mid-frame after {len(body)} of {expected} bytes (epplib would spin)")
            body += chunk
        return body


def result(frame):
    root = ET.fromstring(frame)
    res = root.find(f"{{{EPP}}}response/{{{EPP}}}result")
    cl = root.find(f"{{{EPP}}}response/{{{EPP}}}trID/{{{EPP}}}clTRID")
    return int(res.get("code")), (cl.text if cl is not None else None), root


def main():
    host, port, clid, pw, name = sys.argv[1:6]
    cert, key = (sys.argv[6], sys.argv[7]) if len(sys.argv) > 7 else (None, None)
    t = Transport(host, int(port), cert, key)
    greeting = ET.fromstring(t.receive())
    if greeting.find(f"{{{EPP}}}greeting") is None:
        fail("first frame is not a greeting")
    print("OK greeting")

    def step(label, body, cltrid, want):
        t.send(command(body, cltrid))
        code, got_cltrid, root = result(t.receive())
        if code != want or got_cltrid != cltrid:
            fail(f"{label}: code {code} clTRID {got_cltrid!r}, wanted {want} {cltrid!r}")
        print(f"OK {label} {code}")
        return root

    stamp = "tj2a5q#2026-11-24T16:00:41.0900"
    step("login",
         f"<ns0:login><ns0:clID>{clid}</ns0:clID><ns0:pw>{pw}</ns0:pw><ns0:options><ns0:version>1.0</ns0:version>"
         f"<ns0:lang>en</ns0:lang></ns0:options><ns0:svcs><ns0:objURI>{DOMAIN}</ns0:objURI></ns0:svcs></ns0:login>",
         stamp + "01", 1000)
    root = step("check", f"<ns0:check><ns1:check><ns1:name>{name}</ns1:name></ns1:check></ns0:check>", stamp + "02", 1000)
    avail = root.find(f".//{{{DOMAIN}}}name")
    if avail is None or avail.get("avail") not in ("1", "true"):
        fail(f"check: {name} should be available")
    step("create", f"<ns0:create><ns1:create><ns1:name>{name}</ns1:name><ns1:period unit=\"y\">1</ns1:period>"
         f"<ns1:authInfo><ns1:pw>2fooBAR</ns1:pw></ns1:authInfo></ns1:create></ns0:create>", stamp + "03", 1000)
    root = step("info", f"<ns0:info><ns1:info><ns1:name>{name}</ns1:name></ns1:info></ns0:info>", stamp + "04", 1000)
    if root.find(f".//{{{DOMAIN}}}infData/{{{DOMAIN}}}name").text != name:
        fail("info: wrong domain in the answer")
    step("delete", f"<ns0:delete><ns1:delete><ns1:name>{name}</ns1:name></ns1:delete></ns0:delete>", stamp + "05", 1000)
    step("logout", "<ns0:logout/>", stamp + "06", 1500)
    if t.receive() is not None:
        fail("logout: the connection should close after 1500")
    print("OK closed")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ET.ParseError) as e:
        fail(f"{type(e).__name__}: {e}")
