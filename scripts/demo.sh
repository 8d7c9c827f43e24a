#!/usr/bin/env bash
# Build p2p-copy and move a generated folder through it on this machine: a relay, a
# receiver and a sender on 127.0.0.1 (plain ws://), then compare the result byte for byte.
#
#   PROFILE   cargo profile to build (default: release; "dev" builds faster)
#   KEEP=1    keep the temporary directory and print where it is
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-release}"
cd "$REPO"

cargo build --profile "$PROFILE" -p p2p-copy
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
case "$PROFILE" in dev) BIN="$TARGET_DIR/debug/p2p-copy" ;; *) BIN="$TARGET_DIR/$PROFILE/p2p-copy" ;; esac

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# A tree with nested folders, non-ASCII names, an empty file and files around 1 MiB.
SRC="$WORK/demo-tree"
mkdir -p "$SRC/nested/deeper" "$SRC/ünïcödé"
head -c 1048576 /dev/urandom >"$SRC/exactly-1MiB.bin"
head -c 1048577 /dev/urandom >"$SRC/nested/1MiB-plus-1.bin"
head -c 20000000 /dev/urandom >"$SRC/nested/deeper/20MB.bin"
seq 1 200000 >"$SRC/ünïcödé/日本語.txt"
: >"$SRC/empty"

"$BIN" run-relay-server 127.0.0.1 0 --no-tls >"$WORK/relay.out" 2>"$WORK/relay.err" &
PIDS+=($!)
URL=""
for _ in $(seq 100); do
    URL="$(sed -n 's/^relay listening on //p' "$WORK/relay.out")"
    [ -n "$URL" ] && break
    sleep 0.1
done
[ -n "$URL" ] || { echo "the relay did not start:" >&2; cat "$WORK/relay.err" >&2; exit 1; }
echo "relay: $URL"

CODE="demo-$RANDOM$RANDOM"
"$BIN" receive "$URL" "$CODE" --out "$WORK/received" &
RECEIVER=$!
PIDS+=("$RECEIVER")
"$BIN" send "$URL" "$CODE" "$SRC"
wait "$RECEIVER"

diff -r "$SRC" "$WORK/received/demo-tree"
echo "demo: the received tree is identical to the sent one"
