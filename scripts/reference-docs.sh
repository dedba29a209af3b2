#!/usr/bin/env bash
# The reference of joblife's public partner API, generated from its docstrings by pdoc:
# joblife.storage (with joblife.storage.s3, the S3 backend it opens) and joblife.discovery,
# as HTML in docs/reference/ (generated, not committed), or in the directory given.
# Usage: bash scripts/reference-docs.sh [OUTPUT_DIR]
# pdoc comes with joblife's test extra (pip install -e '.[test]'), or: pip install pdoc.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-docs/reference}"
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
elif [ -x .venv/bin/python ]; then
  python=.venv/bin/python
else
  python=python3
fi

# --docformat restructuredtext: the docstrings use ``code`` and :func:`roles`.
# The warning filtered out is a false alarm: pdoc resolves ``list[StoredObject]`` in the
# class namespace of a storage, where ``list`` is the method; it shows the text as written.
"$python" -W "ignore:Error parsing type annotation list[StoredObject]" -m pdoc \
  --docformat restructuredtext --output-directory "$out" \
  joblife.storage joblife.storage.s3 joblife.discovery
echo "reference docs written to $out/index.html"
