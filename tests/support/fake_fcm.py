"""A loopback stand-in for Google's OAuth token endpoint and the FCM v1 send endpoint.

firebase-admin runs its real code path (service-account JWT grant, then POST
/v1/projects/<p>/messages:send); this server records every message it receives.
Tokens starting with DEAD_PREFIX are answered as UNREGISTERED, like an uninstalled app.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEAD_PREFIX = "dead-"
PROJECT_ID = "halochat-test"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")


class FakeFcm:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.token_requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeFcm":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def sent_to(self, token: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if m.get("token") == token]

    def wait_for(
        self, token: str, count: int = 1, timeout: float = 10.0, **data_match: str
    ) -> list[dict[str, Any]]:
        """Waits until `count` messages to `token` whose data contains `data_match` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                m
                for m in self.sent_to(token)
                if all(m.get("data", {}).get(k) == v for k, v in data_match.items())
            ]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def write_credentials(self, path: Path) -> Path:
        """A service-account file whose token_uri points at this server."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": PROJECT_ID,
                    "private_key_id": "test-key",
                    "private_key": pem,
                    "client_email": f"fcm@{PROJECT_ID}.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": f"{self.url}/token",
                }
            )
        )
        return path

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path == "/token":
                    with fake._lock:
                        fake.token_requests += 1
                    self._reply(
                        200,
                        {
                            "access_token": "fake-access-token",
                            "expires_in": 3600,
                            "token_type": "Bearer",
                        },
                    )
                    return
                match = _SEND_PATH.match(self.path)
                if not match or self.headers.get("Authorization") != "Bearer fake-access-token":
                    self._reply(404 if not match else 401, {"error": {"code": 404}})
                    return
                message = json.loads(raw)["message"]
                token = message.get("token", "")
                if token.startswith(DEAD_PREFIX):
                    self._reply(
                        404,
                        {
                            "error": {
                                "code": 404,
                                "message": "Requested entity was not found.",
                                "status": "NOT_FOUND",
                                "details": [
                                    {
                                        "@type": FCM_ERROR_TYPE,
                                        "errorCode": "UNREGISTERED",
                                    }
                                ],
                            }
                        },
                    )
                    return
                with fake._lock:
                    fake.messages.append(message)
                    n = len(fake.messages)
                self._reply(200, {"name": f"projects/{match.group(1)}/messages/{n}"})

        return Handler
