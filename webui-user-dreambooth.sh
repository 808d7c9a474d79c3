#!/usr/bin/env bash
# Start the WebUI for Dreambooth training (as users of the older Dreambooth extension know it).
# Use: copy this file into the WebUI folder and run it there, or run it from the extension folder.
# It sets REQS_FILE to this extension's requirements-webui.txt (the WebUI's pins + the matching
# diffusers; install.py reads it too) and starts webui.sh
# with any arguments you give. Your own webui-user.sh still applies.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -f "$here/install.py" && -d "$here/dreambooth" ]]; then
    ext_dir="$here"                                        # run from the extension folder
    webui_dir="${WEBUI_DIR:-$(cd "$here/../.." && pwd)}"
else
    webui_dir="${WEBUI_DIR:-$here}"                        # copied into the WebUI folder
    ext_dir="${DREAMBOOTH_EXT_DIR:-}"
    if [[ -z "$ext_dir" ]]; then
        for candidate in "$webui_dir"/extensions/*/; do
            if [[ -f "$candidate/dreambooth/deps.py" && -f "$candidate/webui-user-dreambooth.sh" ]]; then
                ext_dir="${candidate%/}"; break
            fi
        done
    fi
fi
if [[ -z "${ext_dir:-}" || ! -f "$ext_dir/requirements.txt" ]]; then
    echo "Dreambooth tab not found under $webui_dir/extensions: set DREAMBOOTH_EXT_DIR" >&2
    exit 1
fi
if [[ ! -f "$webui_dir/webui.sh" ]]; then
    echo "webui.sh not found in $webui_dir: set WEBUI_DIR to the WebUI folder" >&2
    exit 1
fi

# The WebUI installs REQS_FILE instead of its requirements_versions.txt; requirements-webui.txt includes
# that file and adds the diffusers that fits its pins. install.py reads the same file (constrained pip).
if [[ -z "${REQS_FILE:-}" && -f "$ext_dir/../../requirements_versions.txt" ]]; then
    export REQS_FILE="$ext_dir/requirements-webui.txt"
fi
# Less fragmentation of GPU memory during long training runs (ignored by old torch builds).
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
# Dreambooth models elsewhere:  export COMMANDLINE_ARGS="--dreambooth-models-path /big/disk/dreambooth"
export COMMANDLINE_ARGS="${COMMANDLINE_ARGS:-}"

cd "$webui_dir"
exec ./webui.sh "$@"
