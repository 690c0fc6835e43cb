#!/usr/bin/env python3
"""A registry with a legacy TLS stack, for tests/legacy_tls.rs: a TLS front that offers only
TLS 1.2 with one CBC suite (ECDHE-RSA-AES256-SHA384 unless --cipher says otherwise) and requires a
client certificate, and relays the bytes of each connection to the real (mock) registry over
modern TLS. Python's ssl module is OpenSSL, the stack many registries run.

Prints one line per event on stdout, flushed, for the test to wait on:
  LISTENING <port>
  HANDSHAKE <version> <cipher> <client certificate's sha256:fingerprint> <SNI or ->
  HANDSHAKE-FAILED <OpenSSL reason>
  UPSTREAM-FAILED <why>
Stops when stdin closes (the test ends) or on SIGTERM.

Usage: legacy_tls_front.py --upstream HOST:PORT --cert PEM --key PEM --ca PEM
                           --upstream-cert PEM --upstream-key PEM [--cipher LIST]
"""
import argparse
import hashlib
import socket
import ssl
import sys
import threading


def say(line):
    print(line, flush=True)


def relay(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(conn, server_ctx, upstream, upstream_ctx, sni_seen):
    try:
        tls = server_ctx.wrap_socket(conn, server_side=True)
    except ssl.SSLError as e:
        say(f"HANDSHAKE-FAILED {e.reason}")
        conn.close()
        return
    except OSError as e:
        say(f"HANDSHAKE-FAILED {e}")
        conn.close()
        return
    version = tls.version()
    cipher = tls.cipher()[0]
    peer = "sha256:" + hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
    say(f"HANDSHAKE {version} {cipher} {peer} {sni_seen.pop(id(tls), None) or '-'}")
    host, port = upstream.rsplit(":", 1)
    try:
        raw = socket.create_connection((host, int(port)))
        up = upstream_ctx.wrap_socket(raw, server_hostname="localhost")
    except OSError as e:
        say(f"UPSTREAM-FAILED {e}")
        tls.close()
        return
    threading.Thread(target=relay, args=(up, tls), daemon=True).start()
    relay(tls, up)


def main():
    p = argparse.ArgumentParser()
    for arg in ("--upstream", "--cert", "--key", "--ca", "--upstream-cert", "--upstream-key"):
        p.add_argument(arg, required=True)
    p.add_argument("--cipher", default="ECDHE-RSA-AES256-SHA384")
    a = p.parse_args()

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.set_ciphers(a.cipher)
    server_ctx.load_cert_chain(a.cert, a.key)
    server_ctx.load_verify_locations(a.ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    sni_seen = {}

    def on_sni(sock, name, _ctx):
        sni_seen[id(sock)] = name

    server_ctx.sni_callback = on_sni

    upstream_ctx = ssl.create_default_context(cafile=a.ca)
    upstream_ctx.load_cert_chain(a.upstream_cert, a.upstream_key)

    listener = socket.create_server(("127.0.0.1", 0))
    say(f"LISTENING {listener.getsockname()[1]}")

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(
                target=serve,
                args=(conn, server_ctx, a.upstream, upstream_ctx, sni_seen),
                daemon=True,
            ).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
