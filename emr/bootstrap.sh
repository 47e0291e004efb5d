#!/usr/bin/env bash
# EMR bootstrap action (emr-7.x, Amazon Linux 2023): install the horovod-llm stack into
# the same venv at the same path on every node. `horovod-llm emr up` uploads this script
# with the artifacts it names and passes these arguments; docs/emr.md has the story.
#
#   bootstrap.sh --stack URL --package URL [--horovod-wheel URL | --without-horovod]
#                [--venv DIR] [--home DIR] [--python BIN] [--torch-index-url URL]
#                [--wheel-cache DIR] [--gpu] [--local-test]
#
#   --stack URL          stack.tar.gz: scripts/install-stack.sh, constraints.txt, setup.cfg
#                        (the installation script of the local set-up: one source of truth)
#   --package URL        the horovod-llm wheel
#   --horovod-wheel URL  a horovod wheel built for this OS, Python and torch; without it
#                        install-stack.sh builds one (about 5 minutes)
#   --without-horovod    no horovod and no compiler: the stack of train.launcher=
#                        torch_distributor (Spark's TorchDistributor), which builds nothing
#   --venv DIR           default /opt/horovod-llm/venv; PYSPARK_PYTHON points at DIR/bin/python
#   --home DIR           unpacked stack, downloads, horovod wheel cache (default /opt/horovod-llm)
#   --torch-index-url U  where torch comes from (default: PyPI's torch is a CUDA build,
#                        so https://download.pytorch.org/whl/cpu); "" for the usual index
#   --gpu                GPU core nodes: the cgroup-v1 devices mount YARN's GPU isolation
#                        needs on AL2023; torch from --torch-index-url (a CUDA index);
#                        horovod built with NCCL (install-stack.sh --gpu). Acted on only
#                        where nvidia-smi finds a GPU: the primary node gets the CPU build
#   --local-test         no system package manager, no sudo: install into --venv on any
#                        Linux with python3.11 and a compiler (the test suite runs this)
#
# URLs are s3:// (fetched with the AWS CLI that EMR nodes carry) or local paths.
# Idempotent: a second run on the same node reuses the venv and finishes in seconds.
set -euo pipefail

stack=""
package=""
horovod_wheel=""
venv="/opt/horovod-llm/venv"
home="/opt/horovod-llm"
python_bin="python3.11"
torch_index_url="https://download.pytorch.org/whl/cpu"
wheel_cache=""
local_test=0
with_horovod=1
gpu=0

die() { echo "bootstrap: $*" >&2; exit 1; }
log() { echo "bootstrap: $(date '+%H:%M:%S') $*" >&2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --stack) stack="$2"; shift 2 ;;
    --package) package="$2"; shift 2 ;;
    --horovod-wheel) horovod_wheel="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --home) home="$2"; shift 2 ;;
    --python) python_bin="$2"; shift 2 ;;
    --torch-index-url) torch_index_url="$2"; shift 2 ;;
    --wheel-cache) wheel_cache="$2"; shift 2 ;;
    --local-test) local_test=1; shift ;;
    --without-horovod) with_horovod=0; shift ;;
    --gpu) gpu=1; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n "$stack" ]] || die "--stack URL is required (stack.tar.gz, uploaded by 'horovod-llm emr up')"
[[ -n "$package" ]] || die "--package URL is required (the horovod-llm wheel)"
[[ "$venv" == /* ]] || die "--venv must be an absolute path: Horovod starts every rank with the driver's interpreter path"
[[ $with_horovod -eq 1 || -z "$horovod_wheel" ]] || die "--horovod-wheel and --without-horovod contradict each other: pass one"
wheel_cache="${wheel_cache:-$home/wheels}"

# Bootstrap actions run as user hadoop before EMR installs Spark; root needs sudo.
install_system_packages() {
  # AL2023 keeps python3 at 3.9 for its whole life; 3.11 installs beside it.
  # The compilers and cmake build horovod when no prebuilt wheel is given; without
  # horovod nothing is compiled.
  local packages=(python3.11 python3.11-pip tar gzip)
  if [[ $with_horovod -eq 1 ]]; then packages+=(python3.11-devel gcc gcc-c++ make cmake); fi
  local attempt
  for attempt in 1 2 3; do
    # dnf install of installed packages is a no-op: the idempotent path.
    if sudo dnf install -y -q "${packages[@]}"; then return; fi
    log "dnf install failed (attempt $attempt of 3; another dnf may hold the lock); retrying in 20 s"
    sleep 20
  done
  die "could not install ${packages[*]} with dnf: see the messages above"
}

# Copy an s3:// object or a local file into a folder, keeping its name (pip reads wheel
# names); print the local path.
fetch() {
  local url="$1" dest_dir="$2" dest
  dest="$dest_dir/$(basename "$url")"
  if [[ "$url" == s3://* ]]; then
    aws s3 cp --only-show-errors "$url" "$dest" >&2 || die "could not download $url: check the instance profile's S3 read access"
  else
    [[ -f "$url" ]] || die "$url does not exist"
    cp "$url" "$dest"
  fi
  echo "$dest"
}

if [[ $gpu -eq 1 ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  # The same bootstrap runs on every node; the primary has no GPU and runs no rank.
  log "--gpu, but nvidia-smi finds no GPU on this node: installing the CPU stack here"
  gpu=0
fi
if [[ $local_test -eq 0 ]]; then
  log "installing python3.11 and build tools with dnf"
  install_system_packages
  sudo mkdir -p "$home" "$(dirname "$venv")"
  sudo chown "$(id -u):$(id -g)" "$home" "$(dirname "$venv")"
  if [[ $gpu -eq 1 ]] && ! mountpoint -q /spark-rapids-cgroup/devices; then
    # YARN's GPU isolation (the container-executor's gpu module) works on the cgroup-v1
    # devices controller; AL2023 mounts cgroup v2 only. AWS's EMR 7.x GPU set-up mounts
    # it here, where the yarn-site and container-executor classifications point.
    log "mounting the cgroup-v1 devices controller for YARN's GPU isolation"
    sudo mkdir -p /spark-rapids-cgroup/devices
    sudo mount -t cgroup -o devices cgroupv1-devices /spark-rapids-cgroup/devices
    sudo chmod a+rwx -R /spark-rapids-cgroup
  fi
fi
command -v "$python_bin" >/dev/null 2>&1 || die "$python_bin not found: install Python 3.11 or pass --python"

downloads="$home/downloads"
src="$home/stack"
mkdir -p "$downloads" "$wheel_cache"
log "fetching $stack and $package$([[ $with_horovod -eq 1 ]] || echo ' (no horovod: nothing to build)')"
stack_file=$(fetch "$stack" "$downloads")
package_file=$(fetch "$package" "$downloads")
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$stack_file" -C "$src"
[[ -f "$src/scripts/install-stack.sh" ]] || die "$stack holds no scripts/install-stack.sh: rebuild it with 'horovod-llm emr up'"

args=(--venv "$venv" --python "$python_bin" --package "$package_file" --wheel-cache "$wheel_cache" --skip-system)
if [[ -n "$horovod_wheel" ]]; then
  log "fetching the prebuilt horovod wheel $horovod_wheel"
  args+=(--horovod-wheel "$(fetch "$horovod_wheel" "$downloads")")
fi
if [[ -n "$torch_index_url" ]]; then
  args+=(--torch-index-url "$torch_index_url")
fi
if [[ $with_horovod -eq 0 ]]; then
  args+=(--without-horovod)
fi
if [[ $gpu -eq 1 ]]; then
  args+=(--gpu)
fi
log "installing the stack into $venv"
bash "$src/scripts/install-stack.sh" "${args[@]}"

imports="horovod_llm, pyspark, pyspark.ml.torch.distributor"
[[ $with_horovod -eq 1 ]] && imports="horovod.torch, $imports"
"$venv/bin/python" -c "import $imports" || die "the venv $venv cannot import $imports"
log "horovod-llm $("$venv/bin/python" -c 'import horovod_llm; print(horovod_llm.__version__)') ready in $venv"
