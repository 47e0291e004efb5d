"""On PYTHONPATH, this directory makes Horovod look uninstalled to every process that
inherits it (the CLI, Spark's Python workers, torchrun's ranks): `import horovod...`
fails as it does where the package is absent. tests/test_without_horovod.py runs the torch_distributor launcher's tests with it.
"""

raise ModuleNotFoundError("No module named 'horovod' (hidden by tests/hide_horovod)", name="horovod")
