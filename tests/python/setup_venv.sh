#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment of the foreign-client tests.
# Usage: tests/python/setup_venv.sh VENV_DIR
# The environment is rebuilt only when requirements.txt changes (a stamp file holds
# its checksum), so reruns take a moment. Any failure exits non-zero, loudly.
set -euo pipefail
venv=${1:?usage: setup_venv.sh VENV_DIR}
here=$(cd "$(dirname "$0")" && pwd)
requirements="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "setup_venv.sh: $python not found" >&2; exit 1; }
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$want" > "$stamp"
echo "setup_venv.sh: installed $(wc -l < "$requirements") requirement lines into $venv"
