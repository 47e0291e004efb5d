"""The script every EMR step gives to spark-submit, which runs script files, not `-m module`.

spark-submit ... s3://.../entry.py preprocess --config emr-1a2b3c4d5e6f.yaml
"""

import sys

from horovod_llm.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
