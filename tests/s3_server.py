"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's standalone server on a free port,
in a thread of this process (tests: they can switch its credential checks on) or in a process of its own
(benchmarks: it then takes no CPU time from the process measured). Clients find it as users would find theirs:
through the environment."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

# Recognisable fake credentials: tests look for them in every written file and every message.
KEY_ID = "AKIACMTTESTKEYID0001"
SECRET = "cmt-test-secret-9f8e7d6c5b4a"


@contextmanager
def moto_thread():
    """(host, port) of a moto server in a thread of this process."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield host, port
    finally:
        # moto keeps its buckets in this process, not in the server: emptied so that the next server (another
        # test module's) starts empty
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
        server.stop()


@contextmanager
def moto_process():
    """(host, port) of a moto server in a process of its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def local_s3(bucket: str = "cmt", process: bool = False):
    """Yield the environment (endpoint, credentials, region) that points clients at a fresh server holding
    `bucket`; the server stops on exit."""
    import s3fs

    with (moto_process() if process else moto_thread()) as (host, port):
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": KEY_ID,
               "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}
        s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, endpoint_url=env["AWS_ENDPOINT_URL"],
                          skip_instance_cache=True).mkdir(bucket)
        yield env
