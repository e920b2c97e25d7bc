"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's standalone server, in a thread of
this process, on a free port. Clients find it as users would find theirs: through the environment."""

from __future__ import annotations

import logging
from contextlib import contextmanager

# Recognisable fake credentials: tests look for them in every written file and every message.
KEY_ID = "AKIACMTTESTKEYID0001"
SECRET = "cmt-test-secret-9f8e7d6c5b4a"


@contextmanager
def local_s3(bucket: str = "cmt"):
    """Yield the environment (endpoint, credentials, region) that points clients at a fresh server holding
    `bucket`; the server stops on exit."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": KEY_ID,
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}
    try:
        s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, endpoint_url=env["AWS_ENDPOINT_URL"],
                          skip_instance_cache=True).mkdir(bucket)
        yield env
    finally:
        server.stop()
