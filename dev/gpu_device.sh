#!/usr/bin/env bash
# There, on the GPU machine, through the device tool (DEVELOPERS.md, "The GPU machine"):
#   bash dev/gpu_device.sh stage          with one piece carried (.dev/c0 .. .dev/c4): keeps it in /tmp/parts
#   bash dev/gpu_device.sh run [STEPS]    with the last piece and .dev/pkg carried: reassembles, checks and
#                                         installs everything under /tmp/site (once a machine), then runs
#                                         benchmarks/gpu.py (all steps, or the comma-separated STEPS) within
#                                         BUDGET seconds and leaves the tables in $OUT/results.tgz
# /tmp survives between calls only while the machine stays warm (30 s idle), so the calls follow each other.
set -uo pipefail
export PYTHONUNBUFFERED=1
mode=${1:-}
case "$mode" in
  stage|run) ;;
  *) echo "usage: gpu_device.sh stage | run [STEPS]"; exit 2 ;;
esac
mkdir -p /tmp/parts
found=$(ls .dev/c*/part* 2>/dev/null || true)
[ -n "$found" ] && cp $found /tmp/parts/
ls -l /tmp/parts
if [ "$mode" = stage ]; then
  [ -n "$found" ] || { echo "no piece was carried (carry one of .dev/c0 ..)"; exit 3; }
  exit 0
fi

fail() { echo "$1"; exit 4; }
if [ ! -f /tmp/site/INSTALLED ]; then
  rm -rf /tmp/blob /tmp/site && mkdir -p /tmp/blob /tmp/site
  cat /tmp/parts/part* | tar xf - -C /tmp/blob || fail "the pieces do not make one tar: stage every piece first"
  (cd /tmp/blob && sha256sum -c --quiet SHA256SUMS) || fail "a piece is damaged or missing (SHA256SUMS)"
  tar xJf /tmp/blob/lite.tar.xz -C /tmp/site || fail "lite.tar.xz did not unpack"
  xz -T0 -dc /tmp/blob/provider.xz > /tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so || fail "provider.xz"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/blob/*.whl || fail "wheels"
  touch /tmp/site/INSTALLED
fi
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .dev/pkg/*.whl || fail "project wheel"
# onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* packages that came with torch.
SITE=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
LIBS=$(ls -d "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu*/lib 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The CUDA provider must start, not only be listed: a one-node session says which provider ran.
python3 - <<'PY' || fail "onnxruntime's CUDA provider does not start here"
import onnx, onnxruntime as ort, torch
from onnx import TensorProto, helper
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
# IR 8 named: the machine's onnx (1.23) writes IR 14 by default, newer than onnxruntime 1.31 reads.
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
ran = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"]).get_providers()[0]
print("onnxruntime", ort.__version__, "runs on", ran, "; torch", torch.__version__)
assert ran == "CUDAExecutionProvider", ran
PY
python3 benchmarks/gpu.py --budget "${BUDGET:-480}" ${2:+--steps "$2"} 2>&1 | tee "${OUT:-/tmp}/gpu.log"
rc=${PIPESTATUS[0]}
tar czf "${OUT:-/tmp}/results.tgz" benchmarks/results/*cuda* 2>/dev/null
ls -l "${OUT:-/tmp}"
exit "$rc"
