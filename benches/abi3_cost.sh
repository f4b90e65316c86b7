#!/usr/bin/env bash
# What the stable ABI (abi3) costs on the hot path. The same code is built twice, as the abi3
# extension the wheel ships (linked here by the system linker: zig changes only which glibc
# symbols are named) and as a CPython-3.11-specific one (--no-default-features); each is
# installed in its own venv with the bench peers. Then, for each build in turn:
#   1. benches/side_by_side.py, ROUNDS times, alternating builds, printing our try_acquire rows;
#   2. instructions per try_acquire() and per try_acquire("user_1"), counted by callgrind
#      (1,000,000 calls less an empty run), which no background load changes.
# Run from the repository: benches/abi3_cost.sh   (needs `make install` first; several minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
CALLS=1000000
work=target/abi3-cost
rm -rf "$work"
mkdir -p "$work"

for build in abi3 specific; do
  flags=()
  if [[ $build == specific ]]; then flags=(--no-default-features); fi
  echo "==> Compiling the $build extension (release)"
  .venv/bin/maturin build --release --quiet "${flags[@]}" --out "$work/$build-wheel"
  python3 -m venv "$work/$build"
  "$work/$build/bin/pip" install --quiet "$work/$build-wheel"/*.whl -r requirements-bench.txt
done

echo "==> benches/side_by_side.py, $ROUNDS rounds, builds alternating"
for round in $(seq "$ROUNDS"); do
  for build in abi3 specific; do
    "$work/$build/bin/python" benches/side_by_side.py \
      | grep -E '^ours  (await )?try_acquire\((|"user_1")\) +shards=1 ' \
      | sed "s/^/round $round  $build  /"
  done
done

cat > "$work/loop.py" <<'EOF'
import itertools
import sys

from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter

calls, key = int(sys.argv[1]), sys.argv[2:]
try_acquire = ShardedRateLimiter(rate=1e9, period=1.0, burst_size=10**12, shards=1).try_acquire
for _ in itertools.repeat(None, calls):
    try_acquire(*key)
EOF

instructions() {  # build, calls, key...: the instructions callgrind counts for the whole run
  local build=$1
  shift
  PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$work/$build/bin/python" "$work/loop.py" "$@" 2>&1 | sed -n 's/.*Collected : //p'
}

echo "==> Instructions per call (callgrind: $CALLS calls less an empty run)"
for key in "" user_1; do
  for build in abi3 specific; do
    per_call=$(( ($(instructions $build $CALLS $key) - $(instructions $build 0 $key)) / CALLS ))
    echo "try_acquire(${key:+\"$key\"})  $build  $per_call instructions"
  done
done
