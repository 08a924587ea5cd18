"""The networks: the Video2World DiT (cosmos_dit.py, flavors.py, state_dict.py), the Wan2.1 VAE and the text encoder."""
