"""The `infer` job: sampling videos from the Video2World model (`unipc.py`: the official sampler)."""
