"""Distribution and memory: activation checkpointing (parallelize.py); FSDP2 and context parallelism later."""
