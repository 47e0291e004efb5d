"""`python -m horovod_llm ...`, and the script every EMR step gives to spark-submit (which
runs script files, not `-m module`; `horovod-llm emr` uploads this file as entry.py):

    spark-submit ... s3://.../entry.py preprocess --config config-1a2b3c4d5e6f.yaml
"""

import sys

from horovod_llm.cli import main

sys.exit(main())
