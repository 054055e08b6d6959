"""Start the Streamlit web app with safe server settings (used by ``c2s app``)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

APP_SCRIPT = Path(__file__).resolve().parent / "app.py"
# The app's pages/, assets/ and .streamlit/config.toml sit at the repository root, and Streamlit reads
# .streamlit/config.toml from the working directory, so the server is started from there.
PROJECT_ROOT = APP_SCRIPT.parent.parent


def streamlit_command(
    host: str = "127.0.0.1", port: int = 8501, max_upload_mb: int = 2048
) -> list[str]:
    """Build the command line that serves the web app.

    Parameters
    ----------
    host
        Interface to listen on. The default keeps the app reachable from this machine only;
        use ``0.0.0.0`` only inside a container or behind an authenticating proxy.
    port
        TCP port of the server.
    max_upload_mb
        Largest file, in megabytes, that can be uploaded on the Upload page.

    Returns
    -------
    list of str
        ``python -m streamlit run webapp/app.py`` with the server flags, ready for ``subprocess``.
    """
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        f"--server.address={host}",
        f"--server.port={int(port)}",
        f"--server.maxUploadSize={int(max_upload_mb)}",
        "--server.enableXsrfProtection=true",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        # Streamlit runs a full gc.collect() after every script run, and the progress panel
        # reruns twice a second while a job works. With torch, scanpy and a model loaded one
        # collection takes ~0.4 s holding the GIL, which starved the job thread (annotation in
        # the app fell from ~70 to ~2 cells/s). Python's own generational GC still runs.
        "--runner.postScriptGC=false",
    ]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Return once the server at ``url`` answers its health check (for scripts and tests).

    Raises
    ------
    RuntimeError
        The server process exited, or did not answer within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
                if response.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the app did not answer within {timeout_s:g} s")


def launch(host: str = "127.0.0.1", port: int = 8501, max_upload_mb: int = 2048) -> int:
    """Serve the web app until it is stopped and return the server's exit status.

    Parameters
    ----------
    host, port, max_upload_mb
        See :func:`streamlit_command`.

    Returns
    -------
    int
        Exit status of the Streamlit process (0 on a clean stop).
    """
    # A wildcard address is not something a browser can open; this machine answers on loopback.
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"C2S Studio: open http://{shown}:{port} in your browser (Ctrl+C to stop).", flush=True)
    try:
        return subprocess.call(streamlit_command(host, port, max_upload_mb), cwd=PROJECT_ROOT)
    except KeyboardInterrupt:
        # Ctrl+C reaches the Streamlit child too; it shuts down on its own.
        return 0
