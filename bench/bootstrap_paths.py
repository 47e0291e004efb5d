"""The node bootstrap (emr/bootstrap.sh) of each launcher, timed on this machine: the
Horovod path, building horovod from its sdist (what a node does without
`emr.horovod_wheel_url`) and with a prebuilt wheel, against the TorchDistributor path
(`--without-horovod`), which builds nothing.

    .venv/bin/python bench/bootstrap_paths.py [--json PATH]

Each path installs the release `horovod-llm emr up` would upload into a fresh venv with
`--local-test` (no dnf: the system packages each path asks for are listed from the
script instead), the paths one after the other in one run, from the same pip cache.
Not an EMR measurement: a node also downloads what this machine's cache holds.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, load_average, report, write_result

BOOTSTRAP = REPO_ROOT / "emr" / "bootstrap.sh"


def system_packages(with_horovod: bool) -> list[str]:
    """What bootstrap.sh gives `dnf install` on a node, read from the script."""
    text = BOOTSTRAP.read_text()
    base = re.search(r"local packages=\(([^)]*)\)", text).group(1).split()
    extra = re.search(r"packages\+=\(([^)]*)\)", text).group(1).split()
    return base + (extra if with_horovod else [])


def bootstrap(release, venv: Path, home: Path, wheel_cache: Path, without_horovod: bool) -> dict:
    from horovod_llm.emr.release import wheel_name

    command = [
        "bash", str(BOOTSTRAP), "--local-test",
        "--stack", str(release.files["stack.tar.gz"]), "--package", str(release.files[wheel_name(release.version)]),
        "--venv", str(venv), "--home", str(home), "--wheel-cache", str(wheel_cache), "--torch-index-url", "",
        *(["--without-horovod"] if without_horovod else []),
    ]  # fmt: skip
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"bootstrap failed with status {done.returncode}")
    frozen = subprocess.run([str(venv / "bin/python"), "-m", "pip", "freeze"], capture_output=True, text=True, env=env).stdout.split()
    return {
        "seconds": seconds,
        "built_horovod": "building horovod" in done.stderr,
        "python_packages": len(frozen),
        "horovod_installed": any(p.lower().startswith("horovod==") for p in frozen),
        "venv_mb": sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    from horovod_llm.emr.release import build_release, source_root

    load_before = load_average()
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        release = build_release(source_root(), root / "artifacts")
        cache = root / "wheels"  # empty: the first Horovod path builds, the second reuses its wheel
        for name, without in (("horovod_built_on_the_node", False), ("horovod_prebuilt_wheel", False), ("torch_distributor", True)):
            paths[name] = bootstrap(release, root / name / "venv", root / name / "home", cache, without)
            paths[name]["system_packages"] = system_packages(with_horovod=not without)
            report(f"{name}: {paths[name]['seconds']:.0f} s, {paths[name]['python_packages']} Python packages, built horovod: {paths[name]['built_horovod']}")
    result = {"paths": paths, "load_before": load_before, "load_after": load_average()}
    result["torch_distributor_over_horovod_built"] = paths["torch_distributor"]["seconds"] / paths["horovod_built_on_the_node"]["seconds"]
    write_result(args.json, result)


if __name__ == "__main__":
    main()
