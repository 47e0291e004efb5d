"""The class archive `make setup` built, mapped by a real local session's JVM."""

import subprocess
import sys

import pytest

from horovod_llm import jvm_archive

pytestmark = pytest.mark.spark

# A session as the product makes it, with -Xshare:on added to its JVM options: with that,
# a JVM that cannot map the archive (another Java, another class path) does not start.
SESSION = """
import sys
from horovod_llm.config import SparkConfig
from horovod_llm.spark import session_settings, spark_session
config = SparkConfig(master="local[1]", conf={"spark.ui.enabled": "false"})
options = session_settings(config)["spark.driver.extraJavaOptions"] + " -Xshare:on"
session = spark_session(config, {"spark.driver.extraJavaOptions": options})
assert session.range(10).count() == 10
arguments = session._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
print(" ".join(str(a) for a in arguments))
"""


def test_a_local_sessions_jvm_maps_the_archive_make_setup_built():
    archive = jvm_archive.current_archive()
    assert archive is not None, "no JVM class archive for this Java and PySpark: 'make setup' builds it (see its output)"
    done = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"-XX:SharedArchiveFile={archive}" in done.stdout and "-Xshare:on" in done.stdout
