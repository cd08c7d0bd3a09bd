"""A fake OpenAI-compatible judge server for tests: `reply(body)` writes each chat completion's
text; every request body is kept in `calls`, and `fail` makes it answer 503."""
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def judge_server(reply):
    """Yields (base url, state); state["calls"] lists the request bodies, state["fail"] = True
    makes every request fail with HTTP 503."""
    state = {"calls": [], "fail": False}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            state["calls"].append(body)
            if state["fail"]:
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b'{"error": {"message": "judge overloaded"}}')
                return
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply(body)}}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
