#!/usr/bin/env bash
# Debian's chromium for the page's test in a real headless browser (tests/service/test_service.py): installed
# (apt-get) when no chromium is on PATH. Sourced by .ci/run, which then sets NAS_BERT_REQUIRE_CHROMIUM
# so that the test fails rather than skips when the browser is missing. Any failure is one line on stderr.

chromium_ensure() {
  local sudo=()
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "chromium.sh: chromium is not installed and neither root nor sudo is available to apt-get install it" >&2; return 1; }
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "chromium.sh: chromium is not installed and there is no apt-get to install it" >&2; return 1; }
  echo "chromium.sh: installing Debian's chromium" >&2
  { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
    || { echo "chromium.sh: apt-get install chromium failed" >&2; return 1; }
}
