#!/usr/bin/env bash
# Build llama.cpp's llama-perplexity, llama-bench, llama-quantize and llama-imatrix from the sources
# that PyPI's llama-cpp-python 0.3.36 vendors: the peer lowbit's benchmarks are measured against
# (same machine, same run; quantize/imatrix make the Q3_K_M / Q2_K files of scripts/bench-quality.sh).
# Prints the build directory. Needs a C++ compiler; cmake and ninja come from PyPI.
#
# AMX is left out on purpose: on this project's CPU, llama.cpp's AMX matmul segfaults (seen with
# GGML_NATIVE=ON); everything else the CPU has (AVX-512, VNNI, BF16) is on, as is the weight
# repacking that is llama.cpp's fastest CPU path.
set -euo pipefail
CACHE="${LOWBIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lowbit}"
DIR="$CACHE/llamacpp"
VER=0.3.36
SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$VER.tar.gz"
PY="${PYTHON:-python3}"
mkdir -p "$DIR"
cd "$DIR"
TARGETS=(llama-perplexity llama-bench llama-quantize llama-imatrix)
built=1
for t in "${TARGETS[@]}"; do [ -x "build/bin/$t" ] || built=0; done
if [ "$built" = 1 ]; then echo "$DIR/build/bin"; exit 0; fi
if [ ! -f "llama_cpp_python-$VER.tar.gz" ]; then curl -sSfL -o "llama_cpp_python-$VER.tar.gz.tmp" "$URL" && mv "llama_cpp_python-$VER.tar.gz.tmp" "llama_cpp_python-$VER.tar.gz"; fi
echo "$SHA  llama_cpp_python-$VER.tar.gz" | sha256sum -c --quiet
[ -d "llama_cpp_python-$VER" ] || tar xzf "llama_cpp_python-$VER.tar.gz"
command -v cmake >/dev/null || "$PY" -m pip install --quiet --only-binary :all: cmake ninja >&2
CMAKE=$(command -v cmake || echo "$("$PY" -c 'import sys,os; print(os.path.dirname(sys.executable))')/cmake")
"$CMAKE" -S "llama_cpp_python-$VER/vendor/llama.cpp" -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON -DGGML_AMX_INT8=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >&2
"$CMAKE" --build build --target "${TARGETS[@]}" -j "${JOBS:-2}" >&2
echo "$DIR/build/bin"
