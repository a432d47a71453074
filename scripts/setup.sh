#!/usr/bin/env bash
# Create .venv and install freelabel with everything it needs, on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# The embedded data set (Fashion-MNIST, MIT) from Debian's packages where apt exists; elsewhere
# freelabel downloads it on first use.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# The tested versions; any torch >= 2.4 with its matching torchvision works.
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -q -e ".[test]"
touch "$VENV/.installed"
