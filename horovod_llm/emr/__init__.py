"""`horovod-llm emr`: the pipeline on AWS EMR (docs/emr.md).

`release.py` builds what the cluster installs, `requests.py` turns the config into EMR
and S3 requests (pure), `client.py` sends them with boto3, `watch.py` follows a cluster
or its steps, and `commands.py` is the `emr` subcommand. `entry.py` is the script every
step hands to spark-submit.
"""
