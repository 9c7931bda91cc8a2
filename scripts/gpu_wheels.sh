#!/usr/bin/env bash
# The wheels scripts/gpu_acceptance.py needs on an offline GPU node that has torch, transformers,
# accelerate and peft (and numpy, pandas, pyarrow, fsspec, xxhash, huggingface-hub, pyyaml,
# safetensors, tokenizers) but no package index: Python 3.12, manylinux x86_64. Exactly these:
#   hydra-core, omegaconf, antlr4-python3-runtime   compose the pipeline's config (conf/)
#   lm-eval, datasets, dill, multiprocess           the openllm stage (lm-eval's simple_evaluate
#                                                   on a shipped json task needs no more of them)
#   peft                                            the declared floor, whatever the node has
# The versions are those CI runs (pyproject.toml's ranges); the run was rehearsed on a CPU with
# transformers 5.17, accelerate 1.15 and only the node's packages plus these.
#
# Run (where pip reaches the index): bash scripts/gpu_wheels.sh      writes .whl/ (git-ignored)
# Then, on the node, from the repository root with .whl/ beside it, one command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 scripts/gpu_acceptance.py --expect cuda
# which writes results/bench/gpu.md (its CUDA table) in under 8 minutes on one H100 or H200.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEEL_DIR:-.whl}
PYTHON_VERSION=${WHEEL_PYTHON:-3.12}  # the node's
LIMIT_MIB=40

WHEELS=(
    hydra-core==1.3.8
    omegaconf==2.3.1
    lm-eval==0.4.13
    datasets==5.2.0
    dill==0.4.1
    multiprocess==0.70.19
    peft==0.18.0
)
BUILT=(antlr4-python3-runtime==4.9.3)  # PyPI has only its sdist: built here, pure Python

rm -rf "$DEST"
mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" "${WHEELS[@]}"
python3 -m pip wheel --quiet --no-deps -w "$DEST" "${BUILT[@]}"

ls -l "$DEST"
bytes=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f 1)
count=$(ls "$DEST"/*.whl | wc -l)
mib=$(python3 -c "print(f'{$bytes / 2**20:.1f}')")
echo "$count wheels, $mib MiB in $DEST (limit $LIMIT_MIB MiB)"
if [ "$bytes" -gt $((LIMIT_MIB * 2**20)) ]; then
    echo "over $LIMIT_MIB MiB: the working tree that travels to the node may hold 64 MiB" >&2
    exit 1
fi
echo "on the node: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir" \
    "--upgrade --target /tmp/site $DEST/*.whl && PYTHONPATH=/tmp/site python3" \
    "scripts/gpu_acceptance.py --expect cuda"
