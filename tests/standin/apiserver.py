"""A stand-in for the endpoints kubeforge talks to, for tests of its client logic only (retries,
timeouts, TLS verification, watches, idempotent re-runs). It proves nothing about real
Kubernetes: the e2e suite does that with a real kubelet and API server.

Usage: apiserver.py CONFIG.json — the config names the ports, the TLS files and the behaviour:

  api: {host, port, cert, key, ca}      HTTPS, client certificates verified against ca
  livez: "ok" | "never"
  forbid_admin: bool                    403 on creating ClusterRoleBindings unless system:masters
  pods: [{name, ready_after, reason, exit_code, restarts, annotations}]   mirror pods
  nodes: [name]                         Nodes that exist
  sign: bool                            act as the bootstrapsigner on kube-public/cluster-info
  objects: [object]                     stored before the first request (signed if sign)
  tamper: bool                          change cluster-info's kubeconfig after signing it
  sign_after: seconds                   sign only then (a join right after init)
  health: [{port, tls, cert, key}]      200 on any path (kcm, scheduler, kubelet)
  log: file                             one JSON line per request: method, path, user, groups
  CSRs: GET lists filter by spec.signerName; PUT …/certificatesigningrequests/NAME/approval
  replaces the conditions
  faults: [{method, path, play, times, seconds}]   API faults, for the client's retries: a request
                                        whose method is `method` and whose path contains `path`
                                        is answered by `play` — "drop" (connection closed, nothing
                                        done), "lose" (done, then the connection closed before the
                                        answer), "429" (with Retry-After: 1), "500", or "slow"
                                        (`seconds` of silence, then done) — `times` times (-1:
                                        always); each one played is logged as method "FAULT"

Objects are kept in memory; server-side apply replaces the object and keeps its
resourceVersion when nothing changed, as a real API server does.
"""

import base64
import copy
import hashlib
import hmac
import io
import json
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

CONFIG = json.load(open(sys.argv[1]))
START = time.time()
LOCK = threading.RLock()  # log() is also called with it held
STORE = {}  # (resource, namespace, name) -> object
VERSION = [1]


def next_version():
    VERSION[0] += 1
    return str(VERSION[0])


def log(entry):
    if CONFIG.get("log"):
        with LOCK, open(CONFIG["log"], "a") as f:
            f.write(json.dumps(entry) + "\n")


def b64(s):
    return base64.b64encode(s.encode()).decode()


def unb64(s):
    return base64.b64decode(s).decode()


def pod(spec):
    age = time.time() - START
    ready = spec.get("ready_after") is not None and age >= spec["ready_after"]
    status = {"restartCount": spec.get("restarts", 0), "name": "c", "image": "i", "imageID": "",
              "ready": ready}
    if ready:
        status["state"] = {"running": {}}
    elif spec.get("reason"):
        status["state"] = {"waiting": {"reason": spec["reason"]}}
        if spec.get("exit_code") is not None:
            status["lastState"] = {"terminated": {"exitCode": spec["exit_code"], "reason": "Error"}}
    else:
        status["state"] = {"running": {}}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": spec["name"], "namespace": "kube-system",
                     "annotations": spec.get("annotations", {}),
                     "resourceVersion": "1" if not ready else "2", "uid": spec["name"]},
        "spec": {"nodeName": CONFIG.get("node", ""), "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "containerStatuses": [status],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def sign_cluster_info():
    """The bootstrapsigner: a detached JWS of cluster-info's kubeconfig per signing token."""
    info = STORE.get(("configmaps", "kube-public", "cluster-info"))
    if not info:
        return
    content = info.get("data", {}).get("kubeconfig", "")
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    for (res, ns, _), secret in list(STORE.items()):
        data = secret.get("data", {})
        if res != "secrets" or secret.get("type") != "bootstrap.kubernetes.io/token":
            continue
        if unb64(data.get("usage-bootstrap-signing", "")) != "true":
            continue
        tid, tsecret = unb64(data["token-id"]), unb64(data["token-secret"])
        header = enc(json.dumps({"alg": "HS256", "kid": tid}, separators=(",", ":")).encode())
        mac = hmac.new(tsecret.encode(), f"{header}.{enc(content.encode())}".encode(), hashlib.sha256)
        key = f"jws-kubeconfig-{tid}"
        value = f"{header}..{enc(mac.digest())}"
        if info["data"].get(key) != value:
            info["data"][key] = value
            info["metadata"]["resourceVersion"] = next_version()


PATH = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/([^/]+))?/([^/]+)(?:/([^/]+))?(?:/(approval))?$")


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def identity(self):
        cert = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
        user, groups = "system:anonymous", []
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    user = value
                if key == "organizationName":
                    groups.append(value)
        return user, groups

    def send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def status(self, code, reason, message):
        self.send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": reason, "message": message, "code": code})

    def bearer_token_valid(self):
        """SelfSubjectReview's authentication: a bootstrap token that exists and has not expired."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        tid, _, secret = auth[7:].partition(".")
        stored = STORE.get(("secrets", "kube-system", f"bootstrap-token-{tid}"))
        if not stored or unb64(stored["data"].get("token-secret", "")) != secret:
            return False
        expiration = stored["data"].get("expiration")
        return not expiration or unb64(expiration) > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def body(self):
        n = int(self.headers.get("Content-Length", 0))
        return json.loads(self.rfile.read(n) or b"{}")

    def fault(self):
        """The fault this request plays, if any (counted down)."""
        with LOCK:
            for f in CONFIG.get("faults", []):
                if f.get("times", 1) != 0 and f["method"] == self.command and f["path"] in self.path:
                    f["times"] = f.get("times", 1) - 1
                    log({"method": "FAULT", "path": self.path, "play": f["play"],
                         "request": self.command})
                    return f
        return None

    def handle_any(self):
        fault = self.fault()
        play = fault and fault["play"]
        if play in ("drop", "429", "500"):
            self.close_connection = True
            if play == "drop":
                return self.connection.shutdown(socket.SHUT_RDWR)
            self.send_response(int(play))
            self.send_header("Retry-After", "1")
            self.send_header("Connection", "close")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if play == "slow":
            time.sleep(fault.get("seconds", 30))
        if play == "lose":
            self.wfile = io.BytesIO()
            self.close_connection = True
        self.answer()
        if play == "lose":
            self.connection.shutdown(socket.SHUT_RDWR)

    def answer(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        user, groups = self.identity()
        log({"method": self.command, "path": url.path, "query": url.query, "user": user,
             "groups": groups})
        if url.path in ("/livez", "/healthz", "/readyz"):
            if CONFIG.get("livez", "ok") == "ok":
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(data)
            else:
                self.status(500, "InternalError", "livez check failed")
            return
        if url.path.endswith("/selfsubjectreviews"):
            if not self.bearer_token_valid():
                return self.status(401, "Unauthorized", "Unauthorized")
            return self.send(201, {"kind": "SelfSubjectReview", "status": {"userInfo": {}}})
        m = PATH.match(url.path)
        if not m:
            return self.status(404, "NotFound", url.path)
        ns, resource, name = m.group(1) or "", m.group(2), m.group(3)
        if m.group(4):
            with LOCK:
                return self.approval(resource, name)
        if resource == "pods":
            return self.pods(query)
        with LOCK:
            self.objects(resource, ns, name, query, user, groups)

    def pods(self, query):
        if query.get("watch", ["false"])[0] in ("true", "1"):
            # Stream a MODIFIED event whenever a pod's state changes; end after timeoutSeconds.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            seen = {p["name"]: json.dumps(pod(p)) for p in CONFIG.get("pods", [])}
            deadline = time.time() + int(query.get("timeoutSeconds", ["30"])[0])
            try:
                while time.time() < deadline:
                    for spec in CONFIG.get("pods", []):
                        now = json.dumps(pod(spec))
                        if now != seen[spec["name"]]:
                            seen[spec["name"]] = now
                            line = json.dumps({"type": "MODIFIED", "object": pod(spec)}).encode() + b"\n"
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                            self.wfile.flush()
                            log({"method": "WATCH-EVENT", "path": spec["name"], "at": time.time()})
                    time.sleep(0.05)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        items = [pod(p) for p in CONFIG.get("pods", [])]
        self.send(200, {"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": "1"}, "items": items})

    def objects(self, resource, ns, name, query, user, groups):
        key = (resource, ns, name)
        if resource == "nodes" and name in CONFIG.get("nodes", []) and key not in STORE:
            STORE[key] = {"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": name, "resourceVersion": next_version(),
                                       "uid": str(uuid.uuid4()),
                                       "labels": {"kubernetes.io/hostname": name}}, "spec": {}}
        if self.command == "GET" and name:
            if key not in STORE:
                return self.status(404, "NotFound", f"{resource} {name!r} not found")
            return self.send(200, STORE[key])
        if self.command == "GET":
            items = [o for (r, n, _), o in STORE.items() if r == resource and n == ns]
            selector = query.get("fieldSelector", [""])[0]
            if selector.startswith("type="):
                items = [o for o in items if o.get("type") == selector[5:]]
            if selector.startswith("spec.signerName="):
                items = [o for o in items if o["spec"].get("signerName") == selector[16:]]
            return self.send(200, {"apiVersion": "v1", "kind": "List", "items": items,
                                   "metadata": {"resourceVersion": str(VERSION[0])}})
        if (self.command in ("POST", "PATCH") and resource == "clusterrolebindings"
                and CONFIG.get("forbid_admin") and "system:masters" not in groups):
            return self.status(403, "Forbidden", f"User {user!r} cannot create clusterrolebindings")
        if self.command == "POST":
            obj = self.body()
            key = (resource, ns, obj["metadata"]["name"])
            if key in STORE:
                return self.status(409, "AlreadyExists", f"{resource} already exists")
            obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=next_version())
            STORE[key] = obj
            log({"method": "CREATED", "path": resource, "object": obj, "groups": groups})
            sign_cluster_info()
            return self.send(201, obj)
        if self.command == "DELETE":
            self.body()  # DeleteOptions: read, so the next request on this connection parses
            if key not in STORE:
                return self.status(404, "NotFound", f"{resource} {name!r} not found")
            return self.send(200, STORE.pop(key))
        if self.command == "PATCH":
            patch = self.body()
            kind = self.headers.get("Content-Type", "")
            old = STORE.get(key)
            if "apply-patch" in kind:
                new = copy.deepcopy(patch)
            elif old is None:
                return self.status(404, "NotFound", f"{resource} {name!r} not found")
            else:
                want = patch.get("metadata", {}).get("resourceVersion")
                if want and want != old["metadata"]["resourceVersion"]:
                    return self.status(409, "Conflict", "the object has been modified")
                new = merge(copy.deepcopy(old), patch)
            meta = new.setdefault("metadata", {})
            if old is None:
                meta.update(uid=str(uuid.uuid4()), resourceVersion=next_version())
            else:
                if resource == "configmaps" and name == "cluster-info" and "apply-patch" in kind:
                    # Signatures are the signer's fields, not the applier's: apply keeps them.
                    for k, v in old.get("data", {}).items():
                        if k.startswith("jws-kubeconfig-"):
                            new.setdefault("data", {})[k] = v
                bare = lambda o: {k: v for k, v in o.items() if k != "metadata"} | {
                    "labels": o["metadata"].get("labels"),
                    "ownerReferences": o["metadata"].get("ownerReferences")}
                meta["uid"] = old["metadata"]["uid"]
                same = bare(new) == bare(old)
                meta["resourceVersion"] = old["metadata"]["resourceVersion"] if same else next_version()
            STORE[key] = new
            if CONFIG.get("sign"):
                sign_cluster_info()
            return self.send(200, STORE[key])
        self.status(405, "MethodNotAllowed", self.command)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = handle_any


def approval(self, resource, name):
    """PUT .../certificatesigningrequests/NAME/approval: the conditions replaced (a conflict when
    the resourceVersion is stale)."""
    key = (resource, "", name)
    obj = self.body()
    if self.command != "PUT" or key not in STORE:
        return self.status(404, "NotFound", f"{resource} {name!r} not found")
    old = STORE[key]
    if obj["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
        return self.status(409, "Conflict", "the object has been modified")
    new = copy.deepcopy(old)
    new.setdefault("status", {})["conditions"] = obj.get("status", {}).get("conditions", [])
    new["metadata"]["resourceVersion"] = next_version()
    STORE[key] = new
    log({"method": "APPROVAL", "path": name, "conditions": new["status"]["conditions"]})
    return self.send(200, new)


Api.approval = approval


def merge(target, patch):
    """RFC 7386 JSON merge patch (a null deletes); resourceVersion is a precondition, not data."""
    for field, value in patch.items():
        if field == "resourceVersion":
            continue
        if value is None:
            target.pop(field, None)
        elif isinstance(value, dict) and isinstance(target.get(field), dict):
            merge(target[field], value)
        else:
            target[field] = value
    return target


class Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up (a finished watch, a refused certificate) is no error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)


def serve(handler, port, cert=None, key=None, ca=None, host="127.0.0.1"):
    server = Server((host, port), handler)
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if ca:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def preload():
    for obj in CONFIG.get("objects", []):
        meta = obj["metadata"]
        resource = obj["kind"].lower() + "s"
        meta.update(uid=str(uuid.uuid4()), resourceVersion=next_version())
        STORE[(resource, meta.get("namespace", ""), meta["name"])] = obj
    if CONFIG.get("sign"):
        sign_cluster_info()
    if CONFIG.get("sign_after"):
        def late():
            with LOCK:
                sign_cluster_info()
        threading.Timer(CONFIG["sign_after"], late).start()
    info = STORE.get(("configmaps", "kube-public", "cluster-info"))
    if CONFIG.get("tamper") and info:
        info["data"]["kubeconfig"] += "# changed after signing\n"


preload()
if "api" in CONFIG:
    a = CONFIG["api"]
    serve(Api, a["port"], a["cert"], a["key"], a["ca"], a.get("host", "127.0.0.1"))
for h in CONFIG.get("health", []):
    serve(Health, h["port"], h.get("cert"), h.get("key"))
print("ready", flush=True)
threading.Event().wait()
