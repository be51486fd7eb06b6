#!/usr/bin/env bash
# Debian packages the tests need, installed when missing (CI machines start with only Python,
# pip, gcc and apt). The foundation's tests need none yet; SSH and cloud-init tests add theirs.
set -euo pipefail
need=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  # Grid Engine's packages ask whether to configure a cell: no (the tests make their own)
  for p in gridengine-common gridengine-master gridengine-exec gridengine-client; do
    echo "$p shared/gridengineconfig boolean false"
  done | $sudo debconf-set-selections
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
