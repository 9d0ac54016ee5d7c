#!/usr/bin/env bash
# test.sh — builds with -Werror and runs the test suite (CTest).
#   bash scripts/test.sh              # Release build in build/
#   bash scripts/test.sh --asan       # AddressSanitizer + UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build; extra=""
if [ "${1:-}" = "--asan" ]; then dir=build-asan; extra="-DPEFT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"; fi
cmake -S . -B "$dir" -DPEFT_WERROR=ON $extra >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir"
ctest --output-on-failure -j"$(nproc)"
