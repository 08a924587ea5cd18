"""Distribution and memory: process setup (distributed.py), activation checkpointing and FSDP2
(parallelize.py), context parallelism for sampling (context_parallel.py)."""
