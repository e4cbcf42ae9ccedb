"""`scalelab train` with a slow checkpoint write (a slow file system, a large model), run under
torchrun by tests/integration/test_train_cli.py: rank 0 sleeps SAVE_DELAY_S before each write.

usage: slow_save_train.py train key=value ...   (the CLI's arguments)
"""

import os
import sys
import time

import scalelab.train as train
from scalelab.cli import main

DELAY_S = float(os.environ.get("SAVE_DELAY_S", "0.5"))
_save = train.save_checkpoint


def slow_save(*args, **kwargs):
    time.sleep(DELAY_S)
    return _save(*args, **kwargs)


train.save_checkpoint = slow_save
raise SystemExit(main(sys.argv[1:]))
