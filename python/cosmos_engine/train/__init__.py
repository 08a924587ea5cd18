"""Post-training of the Video2World DiT: objective, optimizer schedule, EMA, the loop and checkpoints."""
