#!/usr/bin/env bash
# Idempotent set-up shared by demo.sh and test.sh: Debian packages, a venv, the project.
#   scripts/setup.sh            runtime only
#   scripts/setup.sh --test     plus the test and docs extras and the packages the cluster tests use
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

# -- Debian packages --------------------------------------------------------------------------------
apt_packages=()
[[ -d /usr/share/datasets/fashion-mnist ]] || apt_packages+=(dataset-fashion-mnist)
if (( want_test )); then
    command -v sshd >/dev/null 2>&1 || [[ -x /usr/sbin/sshd ]] || apt_packages+=(openssh-server)
    command -v rsync >/dev/null 2>&1 || apt_packages+=(rsync)
    command -v nc >/dev/null 2>&1 || apt_packages+=(netcat-openbsd)
fi
if (( ${#apt_packages[@]} )); then
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "setup: apt-get install ${apt_packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

# -- Python ------------------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
extras=""; (( want_test )) && extras="[test,docs]"  # docs: .ci/run builds the site too
stamp=".venv/.installed$extras-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
    echo "setup: pip install -e .$extras (torch and Ray are large: the first time takes minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    # Byte-compiled at install (pip's default; --no-compile saves ~35 s here): where PYTHONDONTWRITEBYTECODE is
    # set, as on this project's machines, nothing compiled later is kept, and every process would compile torch.
    .venv/bin/python -m pip install -q -c constraints.txt -e ".$extras"
    touch "$stamp"
fi
# The project's own modules, which the editable install leaves as source: with PYTHONDONTWRITEBYTECODE every
# process (the suite starts hundreds: Ray workers, CLIs, drivers) compiled them again, ~0.25 CPU s each here.
# compileall skips what is up to date; Python ignores a .pyc whose source has changed since.
.venv/bin/python -m compileall -q orchestrator branches data_split tune inference >/dev/null
