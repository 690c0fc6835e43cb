#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh Debian machine:
#   - libnet-epp-perl: Perl Net::EPP, an independent EPP client the interop tests drive
#   - epptools (PyPI, pinned): a Python EPP client the interop tests drive
#   - openssl, python3: scripts/epp-send.sh and the epplib-style transport test
#   - PyYAML: scripts/check-compose.sh
# Does nothing when everything is already there. Needs root (or sudo) for apt-get.
set -euo pipefail
missing=()
perl -MNet::EPP::Simple -e1 2>/dev/null || missing+=(libnet-epp-perl)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
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
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "installing: ${pip_missing[*]}"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${pip_missing[@]}"
fi
