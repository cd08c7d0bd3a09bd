"""Server limits shared by `create_app` and `phi4r serve` (here so the CLI needs no heavy import)."""
MAX_BODY_BYTES = 1 << 20  # 1 MiB: ample for chat JSON, small enough to refuse abuse early
MAX_QUEUE = 256  # sequences waiting for an engine slot before new requests get 429
GRACEFUL_TIMEOUT = 30.0  # seconds a shutdown lets streams in flight finish
