"""A real S3-compatible server for tests and benchmarks: moto's standalone server in a subprocess on a free
localhost port, and a small TCP proxy in front of it that delays every HTTP request (simulated latency) and
counts them. Nothing is mocked: clients speak HTTP to these."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

_METHODS = {b"GET", b"PUT", b"HEAD", b"POST", b"DELETE"}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1:<free port>; stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **CREDENTIALS})
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def storage_options(self, endpoint: str | None = None) -> dict:
        """s3fs options for this server (or a proxy in front of it at ``endpoint``)."""
        return {"key": CREDENTIALS["AWS_ACCESS_KEY_ID"], "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                "client_kwargs": {"endpoint_url": endpoint or self.endpoint}}

    def env(self, endpoint: str | None = None) -> dict:
        """Environment for a subprocess using s3:// URLs through fsspec's configuration variables."""
        return {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": endpoint or self.endpoint}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class DelayProxy:
    """Forwards TCP connections to ``target_port``, holding each client request ``delay`` seconds before
    passing it on (every read from the client that starts a new HTTP request line is one request)."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.requests = 0
        self.methods: list[bytes] = []  # the method of every request seen, in order
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        started.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def client_to_server() -> None:
            while data := await reader.read(1 << 16):
                # HTTP/1.1 clients send a request on a kept-alive connection only after reading the previous
                # response, so a read beginning with a method is a new request (a body's bytes practically never do)
                method = data.split(b" ", 1)[0]
                if method in _METHODS:
                    self.requests += 1
                    self.methods.append(method)
                    await asyncio.sleep(self.delay)
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def server_to_client() -> None:
            while data := await up_reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.close()

        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.gather(client_to_server(), server_to_client())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
