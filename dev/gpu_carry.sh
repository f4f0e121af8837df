#!/usr/bin/env bash
# Here, on a machine with pip and the registries: prepare what a bare GPU machine lacks to run
# benchmarks/gpu.py, in pieces that each fit one call of the device tool (64 MiB with the tree).
# See DEVELOPERS.md ("The GPU machine"). Writes under .dev/ (git-ignored):
#   .dev/c0 .. .dev/c5   six pieces of one tar: onnxruntime-gpu (its CUDA provider library xz-compressed
#                        apart, the rest as lite.tar.xz), the wheels the machine lacks, SHA256SUMS
#   .dev/pkg             this project's wheel (it holds the tiny weights), rebuilt on every run; it travels
#                        with the last piece, so the pieces are small enough for the two and the tree
# The pieces are rebuilt when the versions below change. Every run ends by checking what each call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=${ORT_VERSION:-1.31.1}
PY=${PYTHON:-.venv/bin/python}
PIECES=6
LIMIT=$((64 * 1048576))  # what one call of the device tool carries, the working tree included
# The machine's Python (see ../.library/device/KINDS.md): wheels with compiled code must match it.
PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all:
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64)
# What the machine's image lacks (it has torch, onnx, numpy, Pillow, click, tqdm, matplotlib, nvidia-ml-py).
PURE=(segment-anything==1.0 open_clip_torch==3.3.0 ftfy==6.3.1 onnxslim==0.1.98)
BINARY=(wcwidth==0.9.4 pycocotools==2.0.11)
STAMP="onnxruntime-gpu==$ORT_VERSION ${PURE[*]} ${BINARY[*]} pieces=$PIECES"
for tool in unzip xz split sha256sum; do command -v "$tool" > /dev/null || { echo "gpu_carry.sh needs $tool"; exit 1; }; done

rm -rf .dev/pkg && "$PY" -m pip wheel -q --no-deps . -w .dev/pkg

built=yes
for k in $(seq 0 $((PIECES - 1))); do [ -f ".dev/c$k/part$k" ] || built=no; done
if [ "$built" = yes ] && [ "$(cat .dev/STAMP 2>/dev/null)" = "$STAMP" ]; then
  echo "pieces already built for: $STAMP"
else
  rm -rf .dev/blob .dev/dl .dev/c? .dev/STAMP && mkdir -p .dev/blob .dev/dl/ort
  "$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d .dev/dl "onnxruntime-gpu==$ORT_VERSION" "${BINARY[@]}"
  "$PY" -m pip wheel -q --no-deps -w .dev/blob "${PURE[@]}"
  mv .dev/dl/wcwidth-*.whl .dev/dl/pycocotools-*.whl .dev/blob/
  # The CUDA provider library is most of the wheel; xz-compressed apart, it shrinks by about a third.
  (cd .dev/dl/ort && unzip -q ../onnxruntime_gpu-*.whl)
  provider=.dev/dl/ort/onnxruntime/capi/libonnxruntime_providers_cuda.so
  xz -T0 -9 -c "$provider" > .dev/blob/provider.xz && rm "$provider"
  tar cJf .dev/blob/lite.tar.xz -C .dev/dl/ort .
  (cd .dev/blob && sha256sum -- * > ../SHA256SUMS && mv ../SHA256SUMS SHA256SUMS)
  tar cf .dev/dl/all.tar -C .dev/blob .
  split -n "$PIECES" -d -a 1 .dev/dl/all.tar .dev/dl/part
  for k in $(seq 0 $((PIECES - 1))); do mkdir -p ".dev/c$k" && mv ".dev/dl/part$k" ".dev/c$k/part$k"; done
  rm -rf .dev/dl .dev/blob
  echo "$STAMP" > .dev/STAMP
fi

# What travels with every call: tracked files and untracked ones that git does not ignore.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
worst=0
for k in $(seq 0 $((PIECES - 1))); do
  extra=$([ "$k" = $((PIECES - 1)) ] && echo .dev/pkg || true)
  size=$(( tree + $(du -cb ".dev/c$k" $extra | tail -1 | cut -f1) ))
  echo "call $((k + 1)): .dev/c$k ${extra:+and $extra }with the tree: $((size / 1048576)) MiB"
  [ "$size" -gt "$worst" ] && worst=$size
done
if [ "$worst" -gt "$LIMIT" ]; then
  echo "a call would carry $((worst / 1048576)) MiB, over the device tool's 64: raise PIECES"
  exit 1
fi
