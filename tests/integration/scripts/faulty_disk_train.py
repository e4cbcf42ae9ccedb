"""`scalelab train` on a misbehaving disk, run under torchrun by tests/integration/test_train_cli.py.

SAVE_DELAY_S=<s>: rank 0 sleeps that long before each checkpoint write (a slow file system, a
large model). FULL_DISK=<file name>: writing that run file (summary.json, ...) fails with ENOSPC.

usage: faulty_disk_train.py train key=value ...   (the CLI's arguments)
"""

import errno
import os
import sys
import time

import scalelab.checkpoint as checkpoint
import scalelab.train as train
from scalelab.cli import main

DELAY_S = float(os.environ.get("SAVE_DELAY_S", "0"))
FULL = os.environ.get("FULL_DISK", "")
_save, _write = train.save_checkpoint, checkpoint.atomic_write_text


def slow_save(*args, **kwargs):
    time.sleep(DELAY_S)
    return _save(*args, **kwargs)


def full_disk(path, text):
    if path.name == FULL:
        raise OSError(errno.ENOSPC, "No space left on device")
    return _write(path, text)


train.save_checkpoint = slow_save
checkpoint.atomic_write_text = full_disk
raise SystemExit(main(sys.argv[1:]))
