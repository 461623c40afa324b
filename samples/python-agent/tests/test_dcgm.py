"""The dcgm-exporter reader against a recorded exposition served over real HTTP on loopback."""

import http.server
import sys
import threading
import unittest
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metering_agent import dcgm  # noqa: E402

RECORDED = (Path(__file__).resolve().parents[3] / "tests" / "Metering.Cli.Tests" / "Dcgm" / "dcgm-exporter-gpu-node-07.txt").read_text(encoding="utf-8")
GPU0 = 'DCGM_FI_DRIVER_VERSION="580.65.06"} 0.012500'


class _Exporter(http.server.BaseHTTPRequestHandler):
    responses: list = []

    def do_GET(self) -> None:  # noqa: N802 (the handler's own name)
        status, body = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *arguments) -> None:
        pass


class DcgmTests(unittest.TestCase):
    def serve(self, *responses):
        _Exporter.responses = list(responses)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return f"http://127.0.0.1:{server.server_address[1]}/metrics"

    def test_recorded_node_averages_per_gpu_into_basis_points_rounded_half_up(self):
        busy_gpu0 = RECORDED.replace(GPU0, GPU0[:-8] + "1")
        url = self.serve((200, RECORDED), (200, busy_gpu0))
        means = dcgm.sample(url, 2, 0)
        # GPU 0: (0.0125 + 1) / 2 = 0.50625 → 5,063; GPU 3: 0.03125 → 312.5 → 313; GPU 7: 0.95005 → 9,501.
        self.assertEqual({0: 5063, 1: 200, 2: 0, 3: 313, 4: 8734, 5: 9123, 6: 8000, 7: 9501}, means)
        self.assertEqual(163, dcgm.mean_bp({0: 125, 1: 200}, [0, 1]))

    def test_a_failing_exporter_is_a_clear_error(self):
        cases = [
            ((500, "dcgm: failed to collect metrics\n"), True, "answered HTTP 500"),
            ((200, "<html><body>Bad Gateway</body></html>\n"), False, "is not a Prometheus sample"),
            ((200, "\n".join(line for line in RECORDED.splitlines() if "SM_ACTIVE" not in line)), False, "has no DCGM_FI_PROF_SM_ACTIVE"),
            ((200, RECORDED.replace(GPU0, GPU0[:-8] + "1.2")), False, "outside 0 to 1"),
            ((200, RECORDED.replace(GPU0, GPU0[:-8] + "NaN")), False, "outside 0 to 1"),
        ]
        for response, unreachable, message in cases:
            with self.subTest(message):
                url = self.serve(response)
                with self.assertRaises(dcgm.DcgmError) as raised:
                    dcgm.read(url)
                self.assertEqual(unreachable, raised.exception.unreachable)
                self.assertIn(message, str(raised.exception))
        with self.assertRaises(dcgm.DcgmError) as nowhere:
            dcgm.read("http://127.0.0.1:9/metrics")
        self.assertTrue(nowhere.exception.unreachable)

    def test_mig_instances_are_not_read(self):
        text = ('DCGM_FI_PROF_SM_ACTIVE{gpu="0", UUID="GPU-a"} 0.25 1764979200000\n'
                'DCGM_FI_PROF_SM_ACTIVE{gpu="0",GPU_I_PROFILE="1g.10gb",GPU_I_ID="7"} 0.9\n')
        self.assertEqual({0: Decimal("0.25")}, dcgm.parse_sm_active(text))


if __name__ == "__main__":
    unittest.main()
