"""The real workload's shapes (Video2World 2B), used by every benchmark."""

DIM = 2048                 # model width D
HEADS, HEAD_DIM = 16, 128
TEXT_TOKENS = 512
# Patch grids (T, H/16, W/16) at 93 frames: 704x1280 (NeMo recipe) and 432x768 ("480p", GR1 recipe).
GRID_720P = (24, 44, 80)   # 84,480 tokens
GRID_480P = (24, 27, 48)   # 31,104 tokens
TOKENS_PER_FRAME_720P = GRID_720P[1] * GRID_720P[2]  # 3,520
