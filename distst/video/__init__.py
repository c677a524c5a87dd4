"""Video: reading and writing clips, optical flow, the temporal-consistency metric and the temporal losses."""

#: Where a user's clips' temporal errors are logged (``temporal.clips``); the synthetic set's have no prefix.
USER_PREFIX = "user_clips/"
#: The metrics an evaluation adds (reports show them beside E, never summed into it); ``temporal_output_std`` (the
#: outputs' mean spatial std: a flat output is stable by definition) is there to read them by.
TEMPORAL_KEYS = ("temporal_error", "temporal_l1", "temporal_output_std", f"{USER_PREFIX}temporal_error",
                 f"{USER_PREFIX}temporal_l1")
