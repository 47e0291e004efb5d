"""`horovod-llm emr up|submit|status|logs|down`: the pipeline on an EMR cluster (docs/emr.md).

Each handler builds its requests with the pure functions of `requests.py`, then either
prints them (`--dry-run`: JSON on stdout, no AWS call) or sends them through `client.py`.
Outputs (cluster and step ids, status, logs) go to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from horovod_llm import launchers
from horovod_llm.config import CONFIG_DIR, RunConfig, from_dict, to_yaml
from horovod_llm.emr import requests as rq
from horovod_llm.emr.preflight import check_before_up
from horovod_llm.emr.release import BOOTSTRAP, ENTRY, STACK_FILES, build_release, describe_release, source_root, wheel_name
from horovod_llm.emr.watch import CLUSTER_ENDED, format_status, wait_for_cluster, wait_for_steps
from horovod_llm.errors import UserError
from horovod_llm.redaction import redacted_dict, redacted_yaml

log = logging.getLogger("horovod_llm.emr")

DEFAULT_CONFIG = CONFIG_DIR / "emr.yaml"
POLL_S = 30.0


def _write(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _aws(config: RunConfig):
    from horovod_llm.emr.client import Aws

    return Aws(config.emr.region)


def _release_uploads(urls: rq.ReleaseUrls, version: str) -> list[tuple[str, str, str, str | None]]:
    """(file name in the release, S3 URL, source for --dry-run, the command that builds it)."""
    wheel = wheel_name(version)
    return [
        ("bootstrap.sh", urls.bootstrap, BOOTSTRAP, None),
        ("stack.tar.gz", urls.stack, "stack.tar.gz", "tar -czf stack.tar.gz " + " ".join(STACK_FILES)),
        (wheel, urls.wheel, f"dist/{wheel}", "python -m pip wheel --no-deps -w dist ."),
        ("entry.py", urls.entry, ENTRY, None),
    ]


def _dry_run_uploads(urls: rq.ReleaseUrls, version: str, region: str) -> tuple[list[dict], list[str]]:
    requests, cli = [], []
    for _, url, source, build in _release_uploads(urls, version):
        requests.append(rq.put_object(url, source))
        if build:
            cli.append(build)
        cli.append(rq.s3_cp_cli(source, url, region))
    return requests, cli


def _upload_release(aws, root: Path, release_id: str, urls: rq.ReleaseUrls, version: str) -> None:
    with tempfile.TemporaryDirectory(prefix="horovod-llm-release-") as tmp:
        release = build_release(root, Path(tmp))
        if release.id != release_id:
            raise UserError("the checkout changed while the release was being built: run the command again")
        for name, url, _, _ in _release_uploads(urls, version):
            aws.upload_file(release.files[name], url)


def _plan(command: str, release_id: str, version: str, urls: rq.ReleaseUrls, requests: list[dict], cli: list[str], files: dict | None = None) -> str:
    plan = {"command": command, "release": {"id": release_id, "version": version, "url": urls.prefix}, "requests": requests, "cli": cli}
    if files:
        plan["files"] = files
    return json.dumps(plan, indent=2)


def shown(config: RunConfig) -> RunConfig:
    """The config as --dry-run prints it and the requests built from it: credentials
    (secret-sounding keys, user:password in URLs) redacted."""
    return from_dict(redacted_dict(config))


def cmd_up(args: argparse.Namespace, config: RunConfig) -> int:
    """Start a cluster whose every node installs the stack (bootstrap action); print its id.

    First it checks what a new account most often lacks (docs/emr.md): the bucket and its
    region, EMR's default roles, the instance types and the EC2 vCPU quota.
    """
    rq.check_launchable(config)
    root = source_root()
    release_id, version = describe_release(root)
    urls = rq.release_urls(config.emr.s3_url, release_id, version)
    request = rq.run_job_flow_request(shown(config) if args.dry_run else config, urls)
    if args.dry_run:
        requests, cli = _dry_run_uploads(urls, version, config.emr.region)
        requests.append(rq.emr_request("RunJobFlow", request))
        cli.append(rq.create_cluster_cli(request, config.emr.region))
        _write(_plan("up", release_id, version, urls, requests, cli))
        return 0
    aws = _aws(config)
    check_before_up(aws, config.emr)  # before anything is uploaded or created
    _upload_release(aws, root, release_id, urls, version)
    cluster_id = aws.run_job_flow(request)
    _write(cluster_id)
    log.info("cluster %s is starting (release %s); follow it with: horovod-llm emr status --cluster-id %s", cluster_id, release_id, cluster_id)
    if args.wait:
        wait_for_cluster(lambda: aws.describe_cluster(cluster_id), log.info, time.sleep, time.monotonic, POLL_S)
        log.info("cluster %s is ready: horovod-llm emr submit --cluster-id %s", cluster_id, cluster_id)
    return 0


def _stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in rq.STAGES]
    if unknown or not stages:
        raise UserError(f"--steps '{text}' must list stages from {','.join(rq.STAGES)}, e.g. --steps train,generate")
    return sorted(set(stages), key=rq.STAGES.index)


def _cluster_release(aws, cluster_id: str, release_id: str, ignore_release: bool, launcher: str) -> str:
    """The release the cluster's nodes installed; refuse a cluster running other code,
    or one bootstrapped without the Horovod that the launcher needs."""
    cluster = aws.describe_cluster(cluster_id)
    state = cluster["Status"]["State"]
    if state in CLUSTER_ENDED:
        raise UserError(f"cluster {cluster_id} is {state}: start a new one with 'horovod-llm emr up'")
    ours = [a for a in aws.list_bootstrap_actions(cluster_id) if rq.release_of_bootstrap(a.get("ScriptPath", ""))]
    if not ours:
        raise UserError(f"cluster {cluster_id} has no horovod-llm bootstrap action: start clusters with 'horovod-llm emr up'")
    releases = [rq.release_of_bootstrap(a["ScriptPath"]) for a in ours]
    if "--without-horovod" in ours[0].get("Args", []) and launchers.launcher(launcher).needs_horovod:
        raise UserError(
            f"cluster {cluster_id} was started without Horovod (emr up with train.launcher=torch_distributor), "
            f"and train.launcher={launcher} needs it: pass train.launcher=torch_distributor, or start a cluster with 'horovod-llm emr up' without it"
        )
    if releases[0] != release_id and not ignore_release:
        raise UserError(
            f"cluster {cluster_id} installed horovod-llm release {releases[0]} but this checkout is release {release_id}, "
            "and nodes run the code they were bootstrapped with: start a new cluster with 'horovod-llm emr up', "
            "or pass --ignore-release to run the cluster's code with this config"
        )
    return releases[0]


def cmd_submit(args: argparse.Namespace, config: RunConfig) -> int:
    """Upload the release and the resolved config, then add the preprocess, train and generate steps."""
    rq.check_launchable(config)
    stages = _stages(args.steps)
    root = source_root()
    release_id, version = describe_release(root)
    # The resolved config (overrides applied) is what runs: the steps need no overrides.
    config = rq.cluster_config(config)
    config_yaml = to_yaml(config)
    name = rq.config_name(config_yaml)
    if args.dry_run:
        urls = rq.release_urls(config.emr.s3_url, release_id, version)
        request = rq.add_job_flow_steps_request(args.cluster_id, [rq.step(shown(config), s, urls, urls.config(name)) for s in stages])
        requests, cli = _dry_run_uploads(urls, version, config.emr.region)
        requests += [rq.put_object(urls.config(name), name), rq.emr_request("AddJobFlowSteps", request)]
        cli += [rq.s3_cp_cli(name, urls.config(name), config.emr.region), rq.add_steps_cli(request, config.emr.region)]
        _write(_plan("submit", release_id, version, urls, requests, cli, files={name: redacted_yaml(config)}))
        return 0
    aws = _aws(config)
    cluster_release = _cluster_release(aws, args.cluster_id, release_id, args.ignore_release, config.train.launcher)
    urls = rq.release_urls(config.emr.s3_url, cluster_release, version)
    if cluster_release == release_id:
        _upload_release(aws, root, release_id, urls, version)
    aws.upload_bytes(config_yaml.encode(), urls.config(name))
    request = rq.add_job_flow_steps_request(args.cluster_id, [rq.step(config, s, urls, urls.config(name)) for s in stages])
    step_ids = aws.add_job_flow_steps(request)
    for step_id, stage in zip(step_ids, stages, strict=True):
        _write(f"{step_id}\t{rq.STEP_PREFIX}{stage}")
    log.info("steps added to %s; follow them with: horovod-llm emr status --cluster-id %s", args.cluster_id, args.cluster_id)
    if args.wait:
        wait_for_steps(lambda: aws.list_steps(args.cluster_id), step_ids, log.info, time.sleep, time.monotonic, POLL_S)
        log.info("all steps completed; outputs under %s", config.output_url)
        if "generate" in stages:
            log.info(
                "the generated text: horovod-llm emr logs --cluster-id %s --step generate --stream stdout (EMR copies logs to S3 within ~5 minutes)",
                args.cluster_id,
            )
    return 0


def cmd_status(args: argparse.Namespace, config: RunConfig) -> int:
    """Print the cluster's state and its steps, oldest first."""
    aws = _aws(config)
    _write(format_status(aws.describe_cluster(args.cluster_id), aws.list_steps(args.cluster_id)))
    return 0


def _pick_step(steps: list[dict], wanted: str | None) -> dict:
    ours = [s for s in steps if rq.step_stage(s["Name"])]
    if wanted is None:
        if not ours:
            raise UserError("the cluster has no horovod-llm steps yet: add them with 'horovod-llm emr submit'")
        return ours[-1]
    matches = [s for s in steps if s["Id"] == wanted] or [s for s in ours if rq.step_stage(s["Name"]) == wanted]
    if not matches:
        raise UserError(f"no step '{wanted}' on this cluster: pass a step id (s-...) or one of {', '.join(rq.STAGES)}")
    return matches[-1]  # the latest run of that stage


def cmd_logs(args: argparse.Namespace, config: RunConfig) -> int:
    """Print a step's logs from S3 (or, with --driver, its Spark driver's)."""
    if not (config.emr.log_uri or config.emr.s3_url):
        raise UserError("emr.s3_url (or emr.log_uri) is empty: pass the one the cluster was started with")
    aws = _aws(config)
    step = _pick_step(aws.list_steps(args.cluster_id), args.step)
    log_uri = rq.log_uri(config.emr)
    streams = ["stderr", "stdout"] if args.stream == "all" else [args.stream]
    urls = [rq.step_log_url(log_uri, args.cluster_id, step["Id"], s) for s in streams]
    if args.driver:
        stderr = aws.read(rq.step_log_url(log_uri, args.cluster_id, step["Id"], "stderr"))
        app = rq.application_id((stderr or b"").decode("utf-8", "replace"))
        if app is None:
            raise UserError(f"no YARN application id in the stderr of step {step['Id']} yet: EMR copies logs to S3 about every 5 minutes; try again")
        containers = aws.list_urls(rq.containers_prefix(log_uri, args.cluster_id, app))
        # The driver (the application master, in cluster mode) is the first container.
        first = sorted({url.rsplit("/", 1)[0] for url in containers})[:1]
        urls = [f"{folder}/{s}.gz" for folder in first for s in streams]
        if not urls:
            raise UserError(f"no container logs of {app} under {rq.containers_prefix(log_uri, args.cluster_id, app)} yet: try again in a few minutes")
    found = 0
    for url in urls:
        data = aws.read(url)
        if data is None:
            continue
        found += 1
        sys.stderr.write(f"==> {url} <==\n")
        sys.stderr.flush()
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()
    if not found:
        raise UserError(
            f"no logs for step {step['Id']} ({step['Status']['State']}) at {urls[0].rsplit('/', 1)[0]}/ yet: "
            "EMR copies logs to S3 about every 5 minutes; try again"
        )
    return 0


def cmd_down(args: argparse.Namespace, config: RunConfig) -> int:
    """Terminate the cluster (billing stops; S3 keeps every output and log)."""
    request = rq.terminate_request(args.cluster_id)
    if args.dry_run:
        _write(
            json.dumps(
                {"command": "down", "requests": [rq.emr_request("TerminateJobFlows", request)], "cli": [rq.terminate_cli(request, config.emr.region)]}, indent=2
            )
        )
        return 0
    _aws(config).terminate_job_flows(request)
    log.info("cluster %s is terminating", args.cluster_id)
    return 0


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """`emr`'s own subcommands, each with --config (default configs/emr.yaml) and overrides."""
    sub = parser.add_subparsers(dest="emr_command", required=True, metavar="EMR_COMMAND")

    def add(name: str, handler, cluster_id: bool) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=handler.__doc__.splitlines()[0], description=handler.__doc__)
        p.set_defaults(emr_handler=handler)
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config file (default: configs/emr.yaml)")
        p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=argparse.SUPPRESS, help="overrides log_level")
        if cluster_id:
            p.add_argument("--cluster-id", required=True, help="the j-... id that 'emr up' printed")
        p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. emr.s3_url=s3://my-bucket/horovod-llm")
        return p

    p = add("up", cmd_up, cluster_id=False)
    p.add_argument("--dry-run", action="store_true", help="print the requests (JSON) and the aws CLI commands; send nothing")
    p.add_argument("--wait", action="store_true", help="wait until the cluster is ready (bootstrap done), with progress")
    p = add("submit", cmd_submit, cluster_id=True)
    p.add_argument("--steps", default=",".join(rq.STAGES), help="stages to add, in order (default: preprocess,train,generate)")
    p.add_argument("--dry-run", action="store_true", help="print the requests (JSON) and the aws CLI commands; send nothing")
    p.add_argument("--wait", action="store_true", help="wait until the steps end, with progress; exit 1 if one fails")
    p.add_argument("--ignore-release", action="store_true", help="submit even when the cluster installed another release of the code")
    add("status", cmd_status, cluster_id=True)
    p = add("logs", cmd_logs, cluster_id=True)
    p.add_argument("--step", help="a step id (s-...) or a stage (preprocess, train, generate); default: the latest step")
    p.add_argument("--stream", choices=["stdout", "stderr", "all"], default="all", help="which output (default: all)")
    p.add_argument("--driver", action="store_true", help="the Spark driver's container logs instead of spark-submit's")
    p = add("down", cmd_down, cluster_id=True)
    p.add_argument("--dry-run", action="store_true", help="print the request and the aws CLI command; send nothing")
