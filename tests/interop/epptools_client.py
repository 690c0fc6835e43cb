#!/usr/bin/env python3
"""Drives eppmux with the `epptools` client from PyPI, over TLS with certificate verification.

Usage: epptools_client.py HOST PORT CA_FILE CLID PASSWORD DOMAIN
Prints one line per step; exits non-zero at the first failure.
"""
import sys

from epptools import Client, Config


def main():
    host, port, ca, clid, pw, name = sys.argv[1:7]
    client = Client(Config(host=host, port=int(port), clid=clid, password=pw, ca_file=ca, read_timeout=10))

    def step(label, response, want=1000):
        code = response.code()
        if code != want:
            print(f"FAIL {label}: {code} {response.message()}")
            sys.exit(1)
        print(f"OK {label} {code}")
        return response

    try:
        client.connect()
        print("OK greeting")
        step("login", client.login())
        avail = step("check", client.domain.check([name])).availability()
        if avail.get(name) is not True:
            print(f"FAIL check: {avail}")
            sys.exit(1)
        step("create", client.domain.create(name, years=1, registrant="jd1234", auth_info="2fooBAR-x1"))
        step("info", client.domain.info(name))
        step("delete", client.domain.delete(name))
        step("logout", client.logout(), want=1500)
    finally:
        client.disconnect()


if __name__ == "__main__":
    main()
