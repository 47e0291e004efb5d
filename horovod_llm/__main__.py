import sys

from horovod_llm.cli import main

sys.exit(main())
