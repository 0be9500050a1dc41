#!/usr/bin/env bash
# Headless Chromium + its WebDriver (tests/test_browser.py) and a CJK font (CJK token labels in
# attnkit.viz heatmaps), from Debian's packages. Idempotent: installs only what is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# grep without -q reads all input: no SIGPIPE for fc-list under pipefail
fc-list : family 2>/dev/null | grep -i "Noto Sans CJK" >/dev/null || need+=(fonts-noto-cjk)
if [ "${#need[@]}" -eq 0 ]; then
  echo "install_browser: chromium, chromedriver and a CJK font are present"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install_browser: installing ${need[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
