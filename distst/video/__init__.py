"""Video: reading and writing clips, optical flow, the temporal-consistency metric and the temporal losses."""
