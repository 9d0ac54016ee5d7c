#!/usr/bin/env bash
# test.sh — builds with -Werror and runs the test suite (CTest), then lists
# what was skipped and why.
#   bash scripts/test.sh              # Release build in build/
#   bash scripts/test.sh --asan       # AddressSanitizer + UBSan build in build-asan/
#   bash scripts/test.sh --tsan       # ThreadSanitizer build in build-tsan/: the tests where
#                                     # threads share a model (PEFT_TSAN_TESTS)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build; extra=""
# The sanitizer build is optimised (-O2 -g): ASan and UBSan check as much
# there, and the real-model tests stay within minutes.
only=()
if [ "${1:-}" = "--asan" ]; then dir=build-asan; extra="-DPEFT_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo"; fi
if [ "${1:-}" = "--tsan" ]; then
    dir=build-tsan; extra="-DPEFT_TSAN=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo"
    only=(-R "${PEFT_TSAN_TESTS:-test_session|test_serve}")
    export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
fi
cmake -S . -B "$dir" -DPEFT_WERROR=ON $extra >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir"
status=0
ctest --output-on-failure -j"$(nproc)" --output-junit ctest-junit.xml "${only[@]}" || status=$?
if grep -q "SKIPPED:" ctest-junit.xml; then
    echo "Skipped (with reasons):"
    grep -ho "SKIPPED:[^&]*" ctest-junit.xml | sort -u | sed "s/^/  /"
fi
exit $status
