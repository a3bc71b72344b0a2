#!/usr/bin/env bash
# One short GPU check of the Pallas rasterizer (issue 17), for a machine with an NVIDIA GPU:
#   1. the compiled (Triton) kernels against the dense XLA reference at 4,096 Gaussians, values and
#      gradients (the kernel tests, with interpret=False forced by running on the GPU);
#   2. forward and forward+backward times at the headline size (262,144 Gaussians, 512 x 512) for pallas
#      and, when torch + gsplat import, gsplat in the same run; table printed and written as JSON.
# Usage: bash experiments/gpu_check.sh [OUT_DIR]   (OUT_DIR default: ./gpu_check; about 5 minutes)
set -euo pipefail
out="${1:-gpu_check}"
mkdir -p "$out"
python - <<'EOF'
import jax, sys
devices = jax.devices()
print("devices:", devices)
if devices[0].platform != "gpu":
    sys.exit("gpu_check: no GPU visible to JAX (install the package with the .[cuda12] extra)")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# 1. Correctness of the compiled kernels (the same tests CPU CI runs in the interpreter).
python -m pytest -q -x -p no:cacheprovider tests/test_kernels_rasterize.py tests/test_render_gsplat_conventions.py \
    2>&1 | tee "$out/tests.txt"
# 2. Speed at 4,096 Gaussians (sanity) and at the headline size, against gsplat when it is installed.
python experiments/bench_rasterizer.py --num_gaussians=4096 --width=128 --height=128 --backends=pallas,xla,gsplat \
    --repeats=10 --json_out="$out/bench_4096.json" 2>&1 | tee "$out/bench_4096.txt"
python experiments/bench_rasterizer.py --num_gaussians=262144 --width=512 --height=512 --backends=pallas,gsplat \
    --repeats=20 --json_out="$out/bench_headline.json" 2>&1 | tee "$out/bench_headline.txt"
echo "gpu_check: results in $out/"
