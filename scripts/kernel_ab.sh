#!/usr/bin/env bash
# The avx512bf16 kernels of git revision OLD_REV against the working tree's, in one process
# (scripts/kernel_ab.cpp). Run from the project root on a CPU with AVX512_BF16.
#
#   bash scripts/kernel_ab.sh OLD_REV [MODE ROWS WIDTH [bf16|f16|f32]]
#   e.g. bash scripts/kernel_ab.sh HEAD~1 planes 64 1024
#        OFFSET=8 bash scripts/kernel_ab.sh HEAD~1 rows 64 1024
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OLD_REV [MODE ROWS WIDTH [bf16|f16|f32]]" >&2
  exit 2
fi
old=$1
shift
work=$(mktemp -d)
trap 'git worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach -q "$work/old" "$old"
flags="-std=c++17 -O3 -DNDEBUG -mavx512f -mavx512cd -mfma -mf16c -mavx512dq -mavx512bf16"
flags="$flags -Wno-maybe-uninitialized -Wno-uninitialized"
table() {  # the avx512bf16 table of tree $1, as the function $2
  printf '#include "kernels/kernels_impl.hpp"\nnamespace bnorm::kernels {\nconst kernel_table& %s() noexcept {\n  static constexpr kernel_table table = make_kernel_table<xsimd::avx512dq>(isa::avx512bf16);\n  return table;\n}\n}  // namespace bnorm::kernels\n' "$2" >"$work/$2.cpp"
  # shellcheck disable=SC2086
  g++ $flags -I"$1/src" -I"$1/include" -I"$work/include" -c "$work/$2.cpp" -o "$work/$2.o"
}
# The configured headers and the library's code outside the kernels: the working tree's build
# (BUILD, default build/release; configured and built there if missing).
build=${BUILD:-build/release}
if [ ! -f "$build/libbnorm.a" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j2 --target bnorm >/dev/null
fi
mkdir -p "$work/include"
cp -r "$build/include/." "$work/include/"
table "$work/old" table_a
table "$PWD" table_b
g++ -std=c++17 -O2 -Isrc -Iinclude -I"$work/include" scripts/kernel_ab.cpp "$work/table_a.o" \
  "$work/table_b.o" "$build/libbnorm.a" -ltbb -lpthread -o "$work/kernel_ab"
if [ $# -ge 3 ]; then
  "$work/kernel_ab" "$@"
else
  for mode in planes planes_gradient rows rows_gradient planes_map rows_map; do
    "$work/kernel_ab" "$mode" 64 1024
  done
fi
