"""The HTTP API under /sdapi/v1/portrait/ and the standalone server."""
