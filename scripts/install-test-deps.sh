#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh Debian machine:
#   - libnet-epp-perl: Perl Net::EPP, an independent EPP client the interop tests drive
#   - epptools (PyPI, pinned): a Python EPP client the interop tests drive
#   - openssl, python3: scripts/epp-send.sh, the epplib-style transport test and the legacy-TLS
#     registry of tests/legacy_tls.rs
#   - libssl-dev, pkg-config: to build eppmux with `--features openssl` (scripts/check-openssl.sh)
#   - PyYAML: scripts/check-compose.sh and the Cloud Foundry manifest check
#   - valgrind: scripts/callgrind.sh (instructions per forwarded command and per sniffed frame)
#   - gevent (PyPI, pinned as getgov pins it) and cisagov/epplib, the real library getgov uses:
#     tests/epplib.rs and tests/cloudfoundry.rs. epplib is not on PyPI: it comes from the source
#     archive beside the repository (CI: ../shared/clients/epplib-*.tar.gz), else from GitHub; if
#     neither is there, this says so and those tests print SKIPPED lines that scripts/test.sh counts.
# Does nothing when everything is already there. Needs root (or sudo) for apt-get.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
missing=()
perl -MNet::EPP::Simple -e1 2>/dev/null || missing+=(libnet-epp-perl)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
command -v valgrind >/dev/null || missing+=(valgrind)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
pip_missing=()
python3 -c 'import epptools' 2>/dev/null || pip_missing+=("epptools==1.1.2")
python3 -c 'import yaml' 2>/dev/null || pip_missing+=("PyYAML==6.0.3")
python3 -c 'import gevent' 2>/dev/null || pip_missing+=("gevent==26.7.0" "greenlet==3.5.4")
pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "installing: ${pip_missing[*]}"
  "${pip[@]}" "${pip_missing[@]}"
fi
if ! python3 -c 'import epplib' 2>/dev/null; then
  # epplib's own dependencies, pinned as getgov pins them, then the library itself.
  epplib_deps=("lxml==6.1.1" "python-dateutil==2.9.0.post0")
  archive=$(ls "$repo"/../shared/clients/epplib-*.tar.gz 2>/dev/null | sort | tail -n 1 || true)
  if [ -n "$archive" ]; then
    echo "installing: cisagov/epplib from $archive"
    "${pip[@]}" "${epplib_deps[@]}" "$archive"
  elif echo "installing: cisagov/epplib from GitHub (no $repo/../shared/clients/epplib-*.tar.gz)" &&
    "${pip[@]}" "${epplib_deps[@]}" "git+https://github.com/cisagov/epplib" 2>/dev/null; then
    :
  else
    echo "NOT INSTALLED: cisagov/epplib (no ../shared/clients/epplib-*.tar.gz beside the" \
      "repository, and github.com/cisagov/epplib could not be installed): the real-epplib tests" \
      "will be SKIPPED" >&2
  fi
fi
