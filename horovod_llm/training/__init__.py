"""Stage 2: a training rank, whatever started it: the job's settings, the collectives, the loop, its statistics and checkpoints' resumption."""
