#!/usr/bin/env bash
# test.sh — builds with -Werror and runs the test suite (CTest), then lists
# what was skipped and why.
#   bash scripts/test.sh              # Release build in build/
#   bash scripts/test.sh --asan       # AddressSanitizer + UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build; extra=""
# The sanitizer build is optimised (-O2 -g): ASan and UBSan check as much
# there, and the real-model tests stay within minutes.
if [ "${1:-}" = "--asan" ]; then dir=build-asan; extra="-DPEFT_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo"; fi
cmake -S . -B "$dir" -DPEFT_WERROR=ON $extra >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir"
status=0
ctest --output-on-failure -j"$(nproc)" --output-junit ctest-junit.xml || status=$?
if grep -q "SKIPPED:" ctest-junit.xml; then
    echo "Skipped (with reasons):"
    grep -ho "SKIPPED:[^&]*" ctest-junit.xml | sort -u | sed "s/^/  /"
fi
exit $status
