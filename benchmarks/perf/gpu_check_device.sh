#!/usr/bin/env bash
# The GPU check as one prepared command for a lent device machine (its tool: /work/.library/device/README.md).
#
#   here, once:  benchmarks/perf/gpu_check_device.sh prepare
#                the Python wheels the device image lacks, into .whl/ (git-ignored; ~5 MB, pure Python)
#   there:       device run with carry [".whl"], timeout_s 570, command:
#                bash benchmarks/perf/gpu_check_device.sh run
#                -> $OUT/gpu_check.json (rewritten after each measurement: a cut-off run keeps what it measured),
#                   $OUT/gpu_check.log, $OUT/nvidia-smi.txt; copy the JSON into results/perf/ and commit it.
#   a rehearsal here on the CPU: PYTHON=.venv/bin/python OUT=/tmp/gc benchmarks/perf/gpu_check_device.sh run --tiny
#
# The device image has torch, numpy, safetensors, scipy, scikit-learn, pandas, matplotlib, pillow, tqdm, pyyaml,
# rich, regex, cloudpickle and OpenCV (KINDS.md in the device tool's folder), and no package index: the OpenMMLab
# stack and submitit travel as wheels, at the versions pyproject.toml pins. The project itself is not installed
# there: `python -m` from the repository root imports sinder/ and benchmarks/ from the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEELS=(mmengine==0.10.7 mmcv-lite==2.1.0 mmsegmentation==1.2.2 ftfy==6.3.1 submitit==1.5.4 addict==2.4.0
        termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.9 wcwidth==0.9.4 prettytable==3.18.0)
PYTHON=${PYTHON:-python3}

case "${1:-}" in
prepare)
    exclude=.git/info/exclude
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    rm -rf .whl
    # the device's Python is 3.12 on x86-64 (KINDS.md)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "${WHEELS[@]}"
    # the device's copy has no .git: the commit travels in .whl/ and becomes gpu_check.json's git_commit
    commit=$(git rev-parse HEAD)
    [ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit+dirty"
    echo "$commit" >.whl/GIT_COMMIT
    echo "prepared $(ls .whl/*.whl | wc -l) wheels in .whl/ ($(du -sh .whl | cut -f1)); carry \".whl\" in the device run"
    ;;
run)
    shift
    out=${OUT:-results/perf}
    mkdir -p "$out"
    if [ ! -d .whl ] || [ -z "$(ls .whl/*.whl 2>/dev/null)" ]; then
        echo "no wheels in .whl/: run '$0 prepare' here first and carry .whl in the device run" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    if [ -z "${SINDER_BENCH_GIT_COMMIT:-}" ] && [ -s .whl/GIT_COMMIT ]; then
        SINDER_BENCH_GIT_COMMIT=$(cat .whl/GIT_COMMIT)
        export SINDER_BENCH_GIT_COMMIT
    fi
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi here" >"$out/nvidia-smi.txt"
    # 540 s: inside the device tool's 570 s, so the JSON written so far always comes back
    timeout 540 "$PYTHON" -m benchmarks.perf.gpu_check --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
    ;;
*)
    echo "usage: $0 prepare | run [gpu_check options]" >&2
    exit 2
    ;;
esac
