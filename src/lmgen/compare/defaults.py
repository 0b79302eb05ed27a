"""`compare`'s defaults, in a module of their own so that `lmgen compare --help` shows them
without importing the runner (and torch)."""

DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_ROWS = 64
DEFAULT_RESAMPLES = 1000
