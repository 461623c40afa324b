"""The agent's encoding and receipt checks against the worked examples, read from the documents themselves."""

import dataclasses
import re
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metering_agent import canonical, receipts  # noqa: E402

DOCS = Path(__file__).resolve().parents[3] / "proto" / "metering" / "v1"


def example(document: str, name: str) -> str:
    match = re.search(rf"^{name}=([0-9a-f]+)$", (DOCS / document).read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{document} has no {name}= line"
    return match.group(1)


START_MS = 1763596800000
RECORDS = [
    canonical.Record(1, "job-42", "9144030071526726XG", "H100-SXM", 8, 1, 1, START_MS, START_MS + 3_600_000, "sz-nanshan-dc1",
                     ("GPU-0001", "GPU-0002"), 5_600_000),
    canonical.Record(2, "job-43", "9144030071526726XG", "A100-SXM", 1, 3, 7, START_MS, START_MS + 1_800_000, "sz-nanshan-dc1"),
    canonical.Record(3, "job-44", "9144030071526726XG", "H100-SXM", 2, 1, 1, START_MS + 3_600_000, START_MS + 7_200_000, "sz-nanshan-dc1",
                     sm_active_bp=312),
]


class CanonicalEncodingTests(unittest.TestCase):
    def test_the_records_encode_to_the_documents_bytes(self):
        self.assertEqual(example("canonical-encoding.md", "R1"), canonical.encode("914403001922038216", "cluster-a", RECORDS[0]).hex())
        self.assertEqual(example("canonical-encoding.md", "R2"), canonical.encode("914403001922038216", "cluster-a", RECORDS[1]).hex())
        self.assertEqual(example("canonical-encoding.md", "R3"), canonical.encode("914403001922038216", "cluster-a", RECORDS[2]).hex())

    def test_the_chain_gives_the_documents_hashes(self):
        hashes = canonical.chain("914403001922038216", "cluster-a", RECORDS)
        self.assertEqual([example("canonical-encoding.md", name) for name in ("H1", "H2", "H3")], [h.hex() for h in hashes[1:]])

    def test_an_absent_sm_activity_adds_no_bytes_and_a_measured_zero_adds_its_tag(self):
        without = canonical.encode("914403001922038216", "cluster-a", RECORDS[1])
        zero = canonical.encode("914403001922038216", "cluster-a", dataclasses.replace(RECORDS[1], sm_active_bp=0))
        self.assertEqual(without + bytes.fromhex("0100000000"), zero)

    def test_text_that_is_not_utf8_is_refused_rather_than_replaced(self):
        with self.assertRaises(UnicodeEncodeError):
            canonical.encode("914403001922038216", "cluster-a", dataclasses.replace(RECORDS[1], job_id="job-\ud800"))


class ReceiptTests(unittest.TestCase):
    PEM = re.search(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----",
                    (DOCS / "receipts.md").read_text(encoding="utf-8"), re.DOTALL).group(0).encode("ascii")

    def setUp(self):
        self.key = receipts.load_public_key(self.PEM)
        self.signed = bytes.fromhex(example("receipts.md", "RECEIPT"))
        self.signature = bytes.fromhex(example("receipts.md", "SIGNATURE"))
        self.head = bytes.fromhex(example("canonical-encoding.md", "H2"))

    def test_the_worked_receipt_verifies_and_reads_as_the_document_says(self):
        self.assertEqual("d49f800b9f0b0535", receipts.key_id_of(self.key))
        fields = receipts.ReceiptChecker([self.key]).check(self.signed, self.signature, "914403001922038216", "cluster-a", 2, self.head)
        self.assertEqual(("d49f800b9f0b0535", 2, 1763600405123), (fields.key_id, fields.sequence, fields.committed_at_ms))

    def test_a_changed_byte_fails_the_signature(self):
        forged = bytearray(self.signed)
        forged[-1] ^= 1
        with self.assertRaisesRegex(receipts.EvidenceError, "bad signature"):
            receipts.ReceiptChecker([self.key]).check(bytes(forged), self.signature, "914403001922038216", "cluster-a", 2, self.head)

    def test_a_genuine_receipt_for_another_head_is_reported(self):
        with self.assertRaisesRegex(receipts.EvidenceError, "expected"):
            receipts.ReceiptChecker([self.key]).check(self.signed, self.signature, "914403001922038216", "cluster-a", 2, bytes(32))

    def test_an_untrusted_key_is_reported(self):
        with self.assertRaisesRegex(receipts.EvidenceError, "not a trusted key"):
            receipts.ReceiptChecker([]).check(self.signed, self.signature, "914403001922038216", "cluster-a", 2, self.head)


if __name__ == "__main__":
    unittest.main()
