#!/usr/bin/env bash
# There, on the GPU machine, through the device tool (DEVELOPERS.md, "The GPU machine"):
#   bash dev/gpu_device.sh stage          with one piece carried (.dev/c0 .. .dev/c3): keeps it in /tmp/parts
#   bash dev/gpu_device.sh run [STEPS]    with the last piece and .dev/pkg carried: reassembles and installs
#                                         everything under /tmp/site, then runs benchmarks/gpu.py (all steps,
#                                         or the comma-separated STEPS) and leaves the tables in $OUT/results.tgz
# /tmp survives between calls only while the machine stays warm (30 s idle), so the calls follow each other.
set -uo pipefail
export PYTHONUNBUFFERED=1
mode=${1:?stage or run}
mkdir -p /tmp/parts && cp .dev/c*/part* /tmp/parts/ 2>/dev/null
ls -l /tmp/parts
[ "$mode" = stage ] && exit 0

if [ ! -d /tmp/site/onnxruntime ]; then
  mkdir -p /tmp/blob /tmp/site
  cat /tmp/parts/part* | tar xf - -C /tmp/blob || { echo "a piece is missing: stage the others first"; exit 3; }
  (cd /tmp/blob && sha256sum -c --quiet SHA256SUMS) || exit 4
  tar xJf /tmp/blob/lite.tar.xz -C /tmp/site
  xz -T0 -dc /tmp/blob/provider.xz > /tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/blob/*.whl || exit 5
fi
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .dev/pkg/*.whl || exit 5
# onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* packages that came with torch.
SITE=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
export LD_LIBRARY_PATH=$(ls -d "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu*/lib 2>/dev/null | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import onnxruntime as o, torch, ssprompt.export.graph; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__)" || exit 6
python3 benchmarks/gpu.py --budget "${BUDGET:-480}" ${2:+--steps "$2"} 2>&1 | tee "${OUT:-/tmp}/gpu.log"
tar czf "${OUT:-/tmp}/results.tgz" benchmarks/results/*cuda* 2>/dev/null
ls -l "${OUT:-/tmp}"
