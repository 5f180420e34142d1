#!/usr/bin/env bash
# Installs the Debian packages hostgate needs, only where missing.
# Waits for the dpkg lock instead of failing when another apt run holds it.
set -euo pipefail

PACKAGES=(swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config gcc openjdk-17-jre-headless maven softhsm2)
# Commands that prove a package is present; cheaper and more robust than dpkg queries
# when Java/Maven came from somewhere other than Debian.
declare -A PROBE=(
  [swtpm]=swtpm [swtpm-tools]=swtpm_setup [tpm2-tools]=tpm2_eventlog [gcc]=gcc
  [openjdk-17-jre-headless]=java [maven]=mvn [pkg-config]=pkg-config [softhsm2]=softhsm2-util
)

missing=()
for p in "${PACKAGES[@]}"; do
  if [[ -n "${PROBE[$p]:-}" ]]; then
    command -v "${PROBE[$p]}" >/dev/null 2>&1 || missing+=("$p")
  else
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "error: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi

echo "installing system packages: ${missing[*]}"
# -o DPkg::Lock::Timeout makes apt wait for a lock held by another apt/dpkg run.
APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)
"${APT[@]}" update >/dev/null
"${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
echo "system packages installed"
