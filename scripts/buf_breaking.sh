#!/usr/bin/env bash
# buf breaking: the protos must stay wire-compatible with the previous commit of main (the
# first parent of HEAD; BUF_AGAINST overrides it). A first commit, or a shallow clone whose
# history cannot be deepened, has nothing to compare against: say so and pass.
# Usage: scripts/buf_breaking.sh BUF_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
buf=${1:-buf}
against=${BUF_AGAINST:-HEAD~1}
if ! git rev-parse --verify -q "$against^{commit}" >/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
    git fetch -q --deepen=1 2>/dev/null || true
  fi
  if ! git rev-parse --verify -q "$against^{commit}" >/dev/null; then
    echo "buf breaking: no commit $against (first commit or shallow clone); nothing to compare"
    exit 0
  fi
fi
old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
if ! git archive "$against" protos | tar -x -C "$old" 2>/dev/null; then
  echo "buf breaking: $against has no protos/; nothing to compare"
  exit 0
fi
# The same workspace on both sides: this buf.yaml and the google/rpc protos `make lint` copied.
cp buf.yaml "$old/"
mkdir -p "$old/build"
cp -r build/protodeps "$old/build/"
"$buf" breaking --against "$old"
echo "buf breaking: protos/ is wire-compatible with $(git rev-parse --short "$against")"
