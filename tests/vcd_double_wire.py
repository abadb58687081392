"""The wire side of the vCD API test double (tests/vcd_double.py): the HTTP handler, basic
auth and Accept parsing, and the JSON and XML renderings of query pages and errors, as vCD's
documented API gives them. A test double: no vCD simulator exists."""

from __future__ import annotations

import base64
import json
import ssl
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from tests.vcd_double import VcdDouble

VCLOUD_NS = "http://www.vmware.com/vcloud/v1.5"
SUPPORTED_VERSIONS = ("33.0", "34.0", "35.0", "36.0", "37.0", "37.1", "37.2", "38.0", "38.1",
                      "39.0")

RECORD_ELEMENT = {"adminVM": "AdminVMRecord", "virtualCenter": "VirtualCenterRecord",
                  "organization": "OrgRecord"}
JSON_TYPE = {"adminVM": "QueryResultAdminVMRecordType",
             "virtualCenter": "QueryResultVirtualCenterRecordType",
             "organization": "QueryResultOrgRecordType"}

def record_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def basic_auth(authorization: str) -> tuple[str, str, str]:
    if not authorization.startswith("Basic "):
        return "", "", ""
    try:
        decoded = base64.b64decode(authorization[6:]).decode()
    except (ValueError, UnicodeDecodeError):
        return "", "", ""
    login, _, password = decoded.partition(":")
    user, _, org = login.rpartition("@")
    return (user, org, password) if user else (login, "", password)


def vcd_error(code: int, minor: str, message: str) -> dict[str, Any]:
    return {"error": True, "majorErrorCode": code, "minorErrorCode": minor, "message": message}


def accept_version(accept: str) -> str | None:
    for part in accept.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "version":
            return value.strip()
    return None


def render_json(answer: dict[str, Any]) -> bytes:
    if answer.get("error"):
        return json.dumps({k: v for k, v in answer.items() if k != "error"} |
                          {"stackTrace": None}).encode()
    records = [{"_type": JSON_TYPE[answer["kind"]], "otherAttributes": {}, "link": [],
                **record} for record in answer["records"]]
    document = {"otherAttributes": {}, "link": answer["links"], "href": answer["href"],
                "type": "application/vnd.vmware.vcloud.query.records+json",
                "name": answer["kind"], "page": answer["page"],
                "pageSize": answer["pageSize"], "total": answer["total"], "record": records,
                "firstPage": None}
    return json.dumps(document).encode()


def render_xml(answer: dict[str, Any]) -> bytes:
    ET.register_namespace("", VCLOUD_NS)
    if answer.get("error"):
        root = ET.Element(f"{{{VCLOUD_NS}}}Error", {
            "majorErrorCode": str(answer["majorErrorCode"]),
            "minorErrorCode": answer["minorErrorCode"], "message": answer["message"]})
    else:
        root = ET.Element(f"{{{VCLOUD_NS}}}QueryResultRecords", {
            "total": str(answer["total"]), "pageSize": str(answer["pageSize"]),
            "page": str(answer["page"]), "name": answer["kind"], "href": answer["href"],
            "type": "application/vnd.vmware.vcloud.query.records+xml"})
        for item in answer["links"]:
            ET.SubElement(root, f"{{{VCLOUD_NS}}}Link", item)
        element = RECORD_ELEMENT[answer["kind"]]
        for record in answer["records"]:
            ET.SubElement(root, f"{{{VCLOUD_NS}}}{element}",
                          {k: record_text(v) for k, v in record.items()})
    return b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + ET.tostring(root)


def handler_for(double: VcdDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "vcd-double"

        def setup(self) -> None:
            # The TLS handshake runs here, in the request thread, not in the accept loop.
            self.request.settimeout(30)
            self.request = double._context.wrap_socket(self.request, server_side=True)
            with double._lock:
                double._connections.add(self.request)
            super().setup()

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                with double._lock:
                    double._connections.discard(self.request)

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (OSError, ssl.SSLError):
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, code: int, body: bytes, kind: str,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _gate(self) -> bool:
            """False when the double is down (the request was answered 503 or dropped)."""
            mode = double._down
            if mode is None:
                return True
            if mode == "stall":
                double._back.wait(60)
                self.close_connection = True
                return False
            if mode == "refuse":
                self.close_connection = True
                return False
            self._send(503, b"Service Unavailable\n", "text/plain")
            return False

        def _record(self) -> tuple[str, dict[str, str]]:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            with double._lock:
                double.requests.append((self.command, parts.path, query,
                                        self.headers.get("Accept", "")))
            return parts.path, query

        def do_POST(self) -> None:
            path, _ = self._record()
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if not self._gate():
                return
            if path != "/cloudapi/1.0.0/sessions/provider":
                self._json(404, vcd_error(404, "NOT_FOUND", f"no resource {path}"))
                return
            version = accept_version(self.headers.get("Accept", ""))
            if version not in SUPPORTED_VERSIONS:
                self._json(406, vcd_error(406, "NOT_ACCEPTABLE",
                                       f"API version {version!r} is not supported"))
                return
            code, headers, body = double._login(self.headers.get("Authorization", ""))
            self._send(code, json.dumps(body).encode(), "application/json", headers)

        def do_DELETE(self) -> None:
            path, _ = self._record()
            if not self._gate():
                return
            if path == "/cloudapi/1.0.0/sessions/current":
                token = double._authorized(self.headers)
                if token is None:
                    self._json(401, vcd_error(401, "UNAUTHORIZED", "not logged in"))
                    return
                with double._lock:
                    double._tokens.discard(token)
                self._send(204, b"", "application/json")
                return
            self._json(404, vcd_error(404, "NOT_FOUND", f"no resource {path}"))

        def do_GET(self) -> None:
            path, query = self._record()
            if not self._gate():
                return
            accept = self.headers.get("Accept", "")
            as_json = "json" in accept.split(";")[0]
            if path == "/cloudapi/1.0.0/sessions/current":
                self._session()
                return
            if path != "/api/query":
                self._answer(as_json, 404, vcd_error(404, "NOT_FOUND", f"no resource {path}"))
                return
            version = accept_version(accept)
            if version not in SUPPORTED_VERSIONS:
                self._answer(as_json, 406, vcd_error(406, "NOT_ACCEPTABLE",
                                                  f"API version {version!r} is not supported"))
                return
            if double._authorized(self.headers) is None:
                self._answer(as_json, 401, vcd_error(401, "UNAUTHORIZED",
                                                  "Session missing, invalid or expired"))
                return
            if double.garbage is not None:
                self._send(200, double.garbage, "text/html")
                return
            code, answer = double._query(query)
            self._answer(as_json, code, answer)
            double._answered()

        def _session(self) -> None:
            version = accept_version(self.headers.get("Accept", ""))
            if version not in SUPPORTED_VERSIONS:
                self._json(406, vcd_error(406, "NOT_ACCEPTABLE",
                                       f"API version {version!r} is not supported"))
                return
            token = double._authorized(self.headers)
            if token is None:
                self._json(401, vcd_error(401, "UNAUTHORIZED", "Session missing or expired"))
                return
            self._send(200, json.dumps(double._current_session(token)).encode(),
                       "application/json;version=" + str(version))
            double._answered()

        def _json(self, code: int, answer: dict[str, Any]) -> None:
            self._send(code, render_json(answer), "application/json")

        def _answer(self, as_json: bool, code: int, answer: dict[str, Any]) -> None:
            if as_json:
                self._send(code, render_json(answer),
                           "application/vnd.vmware.vcloud.query.records+json;version=37.0")
            else:
                self._send(code, render_xml(answer),
                           "application/vnd.vmware.vcloud.query.records+xml;version=37.0")

    return Handler
