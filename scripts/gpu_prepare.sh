#!/usr/bin/env bash
# Prepare what the one unattended GPU call carries, in this checkout (run here, where PyPI is reachable):
#   .whl/       wheels the GPU image lacks: jsonargparse with its signature extras (LightningCLI), and
#               pyinstrument (profile_step.py; without it a coarser stdlib sampler is used)
#   .gpu_data/  the corpus, ../shared/data/pd_english.txt.gz (../shared does not travel with the tree)
# Both are git-ignored; name them in the device call's carry. The call itself (docs/performance.md):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 || exit;
#   python3 scripts/gpu_check.py /tmp/gpu-check --data .gpu_data/pd_english.txt.gz --bundle "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl .gpu_data
# The GPU image's Python is 3.12 on x86-64; versions as in this project's venv.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 importlib_resources==7.1.0 \
    pyinstrument==5.1.3
cp "${GPTMINI_CORPUS:-../shared/data/pd_english.txt.gz}" .gpu_data/
ls -la .whl .gpu_data
