#!/usr/bin/env bash
# Builds the venv of the official Cogment Python SDK (cogment==2.10.1) that
# the compatibility test drives (tests/integration/test_cogment_deployment.py),
# with the grpcio/protobuf this registry uses. About 20 s; reused while its
# pins do not change.
#
#   tests/cogment_sdk/setup_venv.sh [VENV]      # default: .venv-cogment-sdk
#
# Exit 0: ready; 3: PyPI cannot be reached (the test then skips, saying so);
# anything else: a real failure.
#
# Why not `pip install cogment==2.10.1`: the wheel says Requires-Python <3.11
# and pins grpcio<1.49, protobuf<4; it works with ours, so it is installed
# --no-deps --ignore-requires-python, beside what it really imports:
# prometheus-client (cogment.context, its own pin 0.8.0), psutil (cogment.utils;
# the wheel lists it only under an extra) and typing-extensions (grpcio needs
# >= 4.12). Its shipped stubs (protoc 3.x style) load under protobuf 7.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$REPO/.venv-cogment-sdk}"
PYTHON="${PYTHON:-python3.11}"
PINS="grpcio==1.85.3 protobuf==7.36.2 typing-extensions==4.16.0 prometheus-client==0.8.0 psutil==5.9.8"
SDK="cogment==2.10.1"
STAMP="$VENV/.pins"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS $SDK" ]; then
    exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --timeout 20 --retries 1)
# shellcheck disable=SC2086
if ! "${PIP[@]}" $PINS || ! "${PIP[@]}" --no-deps --ignore-requires-python "$SDK"; then
    if ! "$VENV/bin/python" -m pip download --quiet --no-deps --dest "$VENV/probe" "$SDK" >/dev/null 2>&1; then
        rm -rf "$VENV"
        echo "PyPI cannot be reached: cannot install $SDK" >&2
        exit 3
    fi
    exit 1
fi
"$VENV/bin/python" -c "import cogment, cogment.model_registry_v2" 
echo "$PINS $SDK" > "$STAMP"
