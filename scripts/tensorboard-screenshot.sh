#!/usr/bin/env bash
# README's TensorBoard picture, from a real run: serves LOGDIR with TensorBoard on
# loopback and has headless Chromium (Debian's `chromium` package) photograph the
# scalars page. Usage: scripts/tensorboard-screenshot.sh LOGDIR OUT.png [TAG_REGEX]
set -euo pipefail
logdir=$1 out=$2 tags=${3:-loss|lr|tokens_per_s|mfu}
here=$(cd "$(dirname "$0")/.." && pwd)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$here/.venv/bin/tensorboard" --logdir "$logdir" --host 127.0.0.1 --port "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.5; done
# The virtual-time budget lets the page's scripts fetch and draw the charts first.
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1000 \
  --virtual-time-budget=20000 --screenshot="$out" "http://127.0.0.1:$port/#scalars&tagFilter=${tags//|/%7C}" 2>/dev/null
echo "wrote $out"
