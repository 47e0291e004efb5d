"""Every command a user copies from the docs works as written: each fenced shell (and
Python) block of README.md and docs/*.md runs here, in document order, in a folder laid
out like a checkout (`.venv`, `configs/`), with what a command needs from a fixture:

- AWS: the moto server on loopback (EMR, S3, IAM) with fake credentials, the default
  roles and a bucket for YOUR-BUCKET; the cluster id a command names (j-XXXX...) is the
  one the last `emr up` printed. moto runs no step, so each step is COMPLETED as it is
  added, and a stand-in for EMR's log copier writes the logs a step leaves in S3.
- Inputs: /data/my-texts is a folder of one file, three plays of the embedded corpus; `runs/local`, which
  `make demo` leaves, is the output of the "Your own corpus" command (that command
  scaled down, see SCALED_DOWN), and a `horovod-llm serve` on it answers for
  localhost:8000.

A new command in the docs is run by default. Not running one, or running it with extra
arguments, is an exception reviewed here, in EXCEPTIONS or SCALED_DOWN, with the reason.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from horovod_llm.cli import main
from tests.conftest import REPO_ROOT
from tests.integration.test_emr_aws import REGION, create_default_roles, endpoint, steps_succeed  # noqa: F401  (fixtures)
from tests.integration.test_serve import cli_server

DOCS = ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
RUN = (*SHELL, "python")
# Where an untagged block (output, a diagram) must not start a line: a command there
# would escape this test.
COMMAND_START = re.compile(r"^(\$ |horovod-llm |\.venv/bin/|make |curl |aws |python )")

# Reviewed: commands that are not run here, by the start of the command, and why.
EXCEPTIONS = {
    "make test": "the suite itself (.ci/run runs it)",
    "make demo": "4 minutes of training and more: bench/end_to_end.py runs its command (`horovod-llm run --config configs/local.yaml`); here the scaled-down `run` of 'Your own corpus' stands for it",
    "aws emr create-default-roles": "the AWS CLI, which the set-up does not install: the fixture makes the same roles with boto3",
    "aws s3 mb": "the AWS CLI: the fixture makes the bucket with boto3",
    "aws emr add-steps": "the AWS CLI, on a cluster's own files: tests/integration/test_emr_aws.py checks the same request shape",
}
# Reviewed: commands run with extra arguments that only make them shorter.
SCALED_DOWN = {
    ".venv/bin/horovod-llm run": ["train.max_minutes=0", "train.max_steps=6", "train.eval_interval=3", "embedding.word2vec.epochs=1"],
}
MY_TEXTS = "/data/my-texts"
ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)=(\S+)")
DOCUMENTED_PORT = "8000"


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str


def fenced_blocks(doc: str) -> list[Block]:
    text = (REPO_ROOT / doc).read_text()
    blocks = []
    for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M):
        indent = len(match.group(1))
        body = "\n".join(line[indent:] for line in match.group(3).splitlines())
        blocks.append(Block(doc, text[: match.start()].count("\n") + 1, match.group(2), body))
    return blocks


@dataclass
class Command:
    text: str
    expected: str | None  # the output the docs show after a `$ ` prompt, if any


def shell_commands(block: Block) -> list[Command]:
    """The block's commands: continuation lines joined, comments and blank lines left
    out; in a block of `$ ` prompts, the lines after each prompt are its output."""
    commands: list[Command] = []
    lines = block.text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    pending = ""
    for line in lines:
        if prompted and not line.startswith("$ "):
            if commands:
                commands[-1].expected = (commands[-1].expected or "") + line + "\n"
            continue
        line = line.removeprefix("$ ")
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        commands.append(Command(pending + stripped, None))
        pending = ""
    return commands


def exception_for(command: str) -> str | None:
    return next((reason for start, reason in EXCEPTIONS.items() if command.startswith(start)), None)


def test_untagged_blocks_hold_no_commands():
    for doc in DOCS:
        for block in fenced_blocks(doc):
            if not block.lang:
                found = [line for line in block.text.splitlines() if COMMAND_START.match(line)]
                assert not found, f"{doc}:{block.line}: a command in a block without a language escapes the doc test: tag it ```bash"


def test_every_exception_is_still_in_the_docs():
    # an exception for a command the docs no longer hold is stale: remove it
    commands = [c.text for doc in DOCS for b in fenced_blocks(doc) if b.lang in SHELL for c in shell_commands(b)]
    for start in [*EXCEPTIONS, *SCALED_DOWN]:
        assert any(c.startswith(start) for c in commands), f"{start!r} is no longer documented: remove its exception"


def test_the_command_summary_names_real_options(capsys):
    # README's summary of the commands is a synopsis, not a command to copy: each option
    # it shows is one its subcommand takes.
    (summary,) = [b for b in fenced_blocks("README.md") if b.lang == "text" and "horovod-llm doctor" in b.text]
    for line in summary.text.splitlines():
        sub = line.split()[1]
        with pytest.raises(SystemExit):
            main([sub, "--help"])
        usage = capsys.readouterr().out
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line.split("#")[0]):
            assert option in usage, f"README's summary shows {option} for 'horovod-llm {sub}', which its --help does not list"


class Runner:
    """Runs the docs' commands in one folder, keeping what one command leaves for the next."""

    def __init__(self, root: Path, env: dict, bucket: str, s3):
        self.root, self.env, self.bucket, self.s3 = root, env, bucket, s3
        self.variables: dict[str, str] = {}
        self.cluster_id = ""
        self.port = ""
        self.failures: list[str] = []
        self.ran: list[str] = []
        self.applications = 0  # YARN applications the steps started

    def substitute(self, text: str) -> str:
        text = text.replace("YOUR-BUCKET", self.bucket).replace(MY_TEXTS, str(self.root / "my-texts"))
        if self.cluster_id:
            text = re.sub(r"\bj-[0-9A-Z]*X{4,}[0-9A-Z]*\b", self.cluster_id, text)
        if self.port:
            text = re.sub(rf"(localhost|127\.0\.0\.1):{DOCUMENTED_PORT}\b", rf"\1:{self.port}", text)
        return text

    def run(self, where: str, command: Command) -> None:
        reason = exception_for(command.text)
        if reason:
            return
        text = self.substitute(command.text)
        assignment = ASSIGNMENT.fullmatch(text)
        if assignment:
            self.variables[assignment.group(1)] = assignment.group(2)
            return
        for start, extra in SCALED_DOWN.items():
            if text.startswith(start):
                text += " " + " ".join(extra)
        done = subprocess.run(["bash", "-c", text], cwd=self.root, env={**self.env, **self.variables}, capture_output=True, text=True, timeout=900)
        self.ran.append(command.text)
        if done.returncode != 0:
            self.failures.append(f"{where}: `{command.text}` exited {done.returncode}: {done.stderr.strip()[-1500:]}")
            return
        if command.expected is not None and done.stdout.strip() != command.expected.strip():
            self.failures.append(f"{where}: `{command.text}` printed {done.stdout.strip()!r}, the docs show {command.expected.strip()!r}")
        self.after(text, done.stdout)

    def after(self, text: str, stdout: str) -> None:
        """What EMR would do after a command, which moto does not."""
        if " emr up " in f" {text} " and "--dry-run" not in text:
            self.cluster_id = stdout.strip().splitlines()[-1]
        if " emr submit " in f" {text} " and "--dry-run" not in text:
            for line in stdout.splitlines():
                step_id, name = line.split("\t")
                self.copy_step_logs(step_id, name)

    def copy_step_logs(self, step_id: str, name: str) -> None:
        """The logs a completed step leaves under LogUri (EMR copies them from the nodes);
        the docs' emr.s3_url is s3://YOUR-BUCKET/horovod-llm, so LogUri is its logs/."""
        prefix = f"horovod-llm/logs/{self.cluster_id}"
        self.applications += 1
        app = f"application_1733300000000_{self.applications:04d}"
        logs = {
            f"steps/{step_id}/stdout.gz": "ROMEO:\nA sample the generate step printed\n" if name.endswith("generate") else "",
            f"steps/{step_id}/stderr.gz": f"INFO Client: Submitted application {app}\nINFO Client: final status: SUCCEEDED\n",
            f"containers/{app}/container_1_0001_01_000001/stderr.gz": "the driver's log\n",
        }
        for key, text in logs.items():
            self.s3.put_object(Bucket=self.bucket, Key=f"{prefix}/{key}", Body=gzip.compress(text.encode()))

    def run_python(self, where: str, block: Block) -> None:
        done = subprocess.run([sys.executable, "-c", self.substitute(block.text)], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)
        self.ran.append(f"python block at {where}")
        if done.returncode != 0:
            self.failures.append(f"{where}: the Python block exited {done.returncode}: {done.stderr.strip()[-1500:]}")


@pytest.fixture(scope="module")
def runner(tmp_path_factory, endpoint, tiny_corpus):  # noqa: F811
    root = tmp_path_factory.mktemp("checkout")
    (root / ".venv").symlink_to(REPO_ROOT / ".venv")
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    # one file of three plays: cut into paragraph units, enough documents to hold some out
    (root / "my-texts").mkdir()
    (root / "my-texts" / "plays.txt").write_text("\n\n".join(p.read_text() for p in sorted(tiny_corpus.iterdir())))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTEST_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_SESSION_TOKEN="testing", AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=endpoint, AWS_CONFIG_FILE=str(root / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(root / "no-aws-credentials"),
        PATH=f"{REPO_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", SPARK_LOCAL_IP="127.0.0.1", PYTHONPATH=str(REPO_ROOT),
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        for name, value in env.items():
            if name.startswith("AWS_"):
                stack.enter_context(_environ(name, value))
        create_default_roles()
        s3 = boto3.client("s3", region_name=REGION)
        bucket = "docs-bucket"
        s3.create_bucket(Bucket=bucket)
        yield Runner(root, env, bucket, s3)


@contextlib.contextmanager
def _environ(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@pytest.mark.spark
@pytest.mark.horovod
def test_the_readme_commands_work_as_written(runner, steps_succeed):  # noqa: F811
    runner.failures.clear()
    doc = "README.md"
    blocks = fenced_blocks(doc)
    # the serving examples need a server on runs/local: it starts once runs/local exists
    first_serving = next(i for i, b in enumerate(blocks) if "localhost:8000" in b.text or "127.0.0.1:8000" in b.text)
    with contextlib.ExitStack() as stack:
        for index, block in enumerate(blocks):
            if index == first_serving:
                assert (runner.root / "runs" / "local" / "checkpoints").exists(), "\n".join(runner.failures)
                runner.port = str(stack.enter_context(cli_server(str(runner.root / "runs" / "local"), "--threads", "1")))
            run_doc_block(runner, block)
    assert not runner.failures, "\n".join(runner.failures)
    expected = [c.text for b in blocks if b.lang in SHELL for c in shell_commands(b) if not exception_for(c.text) and not ASSIGNMENT.fullmatch(c.text)]
    assert [c for c in runner.ran if not c.startswith("python block")] == expected
    print("\n".join(runner.ran))


def run_doc_block(runner: Runner, block: Block) -> None:
    where = f"{block.doc}:{block.line}"
    if block.lang == "python":
        runner.run_python(where, block)
    elif block.lang in SHELL:
        for command in shell_commands(block):
            runner.run(where, command)
            mine, local = runner.root / "runs" / "mine", runner.root / "runs" / "local"
            if command.text.startswith(".venv/bin/horovod-llm run") and mine.exists() and not local.exists():
                shutil.copytree(mine, local)  # what `make demo` leaves, for the commands that use runs/local


@pytest.mark.parametrize("doc", [d for d in DOCS if d != "README.md"])
def test_the_docs_commands_work_as_written(runner, steps_succeed, doc):  # noqa: F811
    runner.failures.clear()
    for block in fenced_blocks(doc):
        run_doc_block(runner, block)
    assert not runner.failures, "\n".join(runner.failures)
