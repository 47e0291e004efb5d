"""The release: named by its inputs, stack bundle with exactly the installation files."""

import io
import tarfile

from horovod_llm.emr.release import STACK_FILES, describe_release, package_version, release_id, release_inputs, source_root, stack_bundle


def test_the_same_inputs_give_the_same_id_and_any_change_a_new_one():
    inputs = {"setup.cfg": b"[metadata]\nversion = 0.1.0\n", "horovod_llm/a.py": b"x = 1\n"}
    assert release_id(inputs) == release_id(dict(reversed(inputs.items())))
    assert release_id(inputs) != release_id({**inputs, "horovod_llm/a.py": b"x = 2\n"})
    # a file moving to another name is a change too
    assert release_id(inputs) != release_id({"setup.cfg": inputs["setup.cfg"], "horovod_llm/b.py": b"x = 1\n"})
    assert len(release_id(inputs)) == 12 and package_version(inputs) == "0.1.0"


def test_release_inputs_of_this_checkout():
    root = source_root()
    inputs = release_inputs(root)
    assert {"emr/bootstrap.sh", "scripts/install-stack.sh", "constraints.txt", "setup.cfg", "horovod_llm/__main__.py", "horovod_llm/cli.py"} <= set(inputs)
    assert not [name for name in inputs if "__pycache__" in name or name.endswith(".pyc")]
    assert describe_release(root) == (release_id(inputs), package_version(inputs))


def test_stack_bundle_holds_the_installation_script_and_its_pins_and_is_stable():
    inputs = {name: f"content of {name}\n".encode() for name in STACK_FILES}
    bundle = stack_bundle(inputs)
    assert bundle == stack_bundle(inputs)
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == sorted(STACK_FILES)
        assert members["scripts/install-stack.sh"].mode == 0o755
        assert tar.extractfile("constraints.txt").read() == b"content of constraints.txt\n"
