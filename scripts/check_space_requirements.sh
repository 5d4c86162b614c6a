#!/usr/bin/env bash
# Resolve requirements.txt the way a Hugging Face Space's pip does (no scripts/setup.sh, nothing already
# installed counted), once per torch version at the edges of what ZeroGPU offers (2.8 and 2.11), for
# the Space's Python 3.12 on x86-64 Linux (--target: pip allows another Python's wheels only there).
# Nothing is installed. It asks the package index about some 90 packages per version: measured here
# (2 loaded cores, this network), 253 s for torch 2.8.0 and 132 s for 2.11.0, too slow for every CI run,
# hence a script.
#
#     bash scripts/check_space_requirements.sh [TORCH_VERSION ...]      (default: 2.8.0 2.11.0)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=".venv/bin/python"
[ -x "$PY" ] || PY=python3
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(2.8.0 2.11.0)

# A Space's image is Debian (glibc 2.36): every manylinux tag up to it.
platforms=()
for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for torch in "${versions[@]}"; do
  start=$(date +%s)
  if "$PY" -m pip install --dry-run --ignore-installed --only-binary=:all: --python-version 3.12 "${platforms[@]}" \
       --target "$work/target" --quiet --disable-pip-version-check --report "$work/report.json" \
       -r requirements.txt "torch==$torch" 2> "$work/err"; then
    "$PY" - "$work/report.json" "$torch" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
report, torch, seconds = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
keys = ("torch", "transformers", "gradio", "spaces", "llguidance", "numpy")
print(f"torch {torch}: resolves, {len(got)} packages in {seconds} s ("
      + ", ".join(f"{k} {got.get(k, '?')}" for k in keys) + ")")
EOF
  else
    echo "torch $torch: does NOT resolve:" >&2
    grep -v "is ignored: it is neither a file nor a directory" "$work/err" >&2 || true
    status=1
  fi
done
exit $status
