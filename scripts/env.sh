# Environment for building effectc against the PyPI libtorch. Source it before running
# cargo by hand:  . scripts/env.sh && cargo test --release
export EFFECTC_TORCH_VERSION=2.11.0
export EFFECTC_TORCH_VENV="${EFFECTC_TORCH_VENV:-$HOME/.cache/effectc/torch-$EFFECTC_TORCH_VERSION}"
export LIBTORCH_USE_PYTORCH=1
# torch-sys runs `python` from PATH when VIRTUAL_ENV is set: make it the venv's.
export VIRTUAL_ENV="$EFFECTC_TORCH_VENV"
export PATH="$EFFECTC_TORCH_VENV/bin:$PATH"
