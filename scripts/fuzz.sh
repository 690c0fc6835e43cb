#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time and prints the executions reached.
# Not part of CI (it takes minutes); see the README's security section for recorded figures.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]   (default 300, every target)
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); runs on the stable toolchain through
# RUSTC_BOOTSTRAP, without a sanitizer (eppmux has no unsafe code of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame_decoder sniffer differential)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

# Seed corpora from the sample frames kept in the repository.
mkdir -p fuzz/corpus/sniffer fuzz/corpus/frame_decoder fuzz/corpus/differential
for f in crates/eppmux-wire/tests/frames/*.xml examples/*.xml; do
  cp "$f" "fuzz/corpus/sniffer/$(basename "$f")"
  cp "$f" "fuzz/corpus/differential/$(basename "$f")"
  python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); sys.stdout.buffer.write(bytes([7])+(len(d)+4).to_bytes(4,"big")+d)' "$f" \
    > "fuzz/corpus/frame_decoder/$(basename "$f").frame"
done

for target in "${targets[@]}"; do
  log=$(mktemp)
  # The differential target starts from XML's and EPP's tokens and the known tricks.
  dict=()
  [ "$target" != differential ] || dict=(-dict="$PWD/fuzz/differential.dict")
  echo "== $target: ${secs}s"
  cargo fuzz run -s none --release "$target" -- -max_total_time="$secs" -max_len=65536 ${dict[@]+"${dict[@]}"} 2>&1 | tee "$log" | grep -E "^#[0-9]+ +DONE|ERROR|panicked|crash-" || true
  if grep -qE "ERROR: libFuzzer|panicked|deadly signal" "$log"; then
    echo "== $target: FAILED (see fuzz/artifacts/$target)"; exit 1
  fi
  runs=$(grep -oE "^#[0-9]+" "$log" | tail -1 | tr -d '#')
  echo "== $target: ${runs:-?} executions in ${secs}s, no crash"
done
