#!/usr/bin/env bash
# The wheel route, end to end: build the wheel with the developer venv's torch (reusing the CMake build
# folder that scripts/setup.sh left, so nothing recompiles), install it into a fresh venv that gets only
# the torch the wheel pins and the wheel's own dependencies, then run `cosmos-engine info` and the README's
# quick-start loop there, from a folder outside the checkout (so the installed package is what runs).
#
#   PYTHON=.venv/bin/python   the interpreter (with torch and the build tools) that builds the wheel
#   DIST=dist                 where the wheel goes (emptied first)
#   BASE_PYTHON=python3       the interpreter that creates the fresh venv
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
PYTHON=${PYTHON:-.venv/bin/python}
DIST=${DIST:-dist}
work=$(mktemp -d /tmp/cosmos_wheel_check.XXXXXX)
trap 'rm -rf "$work"' EXIT
# This machine's pip configuration names local package folders that may not exist; drop that noise.
exec 2> >(grep --line-buffered -v "is ignored: it is neither a file nor a directory" >&2)
start=$SECONDS

rm -rf "$DIST"
"$PYTHON" -m pip wheel -q . --no-build-isolation --no-deps -w "$DIST"
wheel=$(ls "$DIST"/cosmos_engine-*.whl)
echo "check_wheel: built $wheel ($(du -k "$wheel" | cut -f1) KiB) in $((SECONDS - start)) s"
"$PYTHON" - "$wheel" <<'EOF'
import importlib.metadata, re, sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
pins = [line for line in metadata.splitlines() if re.match(r"Requires-Dist: torch(?=[ =<>!~;(\[]|$)", line)]
want = f"Requires-Dist: torch=={importlib.metadata.version('torch')}"
assert pins == [want], f"the wheel's torch requirement is {pins}, expected [{want!r}]"
print(f"check_wheel: {want}")
EOF

"${BASE_PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel"
echo "check_wheel: installed into a fresh venv at $((SECONDS - start)) s"

cd "$work"
"$work/venv/bin/cosmos-engine" info
"$work/venv/bin/cosmos-engine" info --json | "$work/venv/bin/python" -c "
import json, sys
build = json.load(sys.stdin)['build']
assert build['loaded'] and build['path'].startswith('$work/venv/'), build
print('check_wheel: the fresh venv loads', build['path'])"

# The README's quick-start command, with the fresh venv's commands and without the setup step.
cp -r "$repo/recipes" "$work/recipes"
loop=$("$work/venv/bin/python" -c "
import re, sys
section = open('$repo/README.md').read().split('## Quick start', 1)[1]
command = re.search(r'\`\`\`bash\n(.*?)\n\`\`\`', section, re.S).group(1)
print(command.replace('scripts/setup.sh && ', '').replace('.venv/bin/', '$work/venv/bin/'))")
IMAGINAIRE_OUTPUT_ROOT="$work/root" bash -c "$loop"
test -f outputs/tiny_infer/tiny_robot.mp4
echo "check_wheel: OK (build, fresh install, info and the README loop in $((SECONDS - start)) s)"
