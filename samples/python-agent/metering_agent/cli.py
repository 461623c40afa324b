"""The command line: `metering-agent stream` and `metering-agent upload`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

EXIT_CODES = """exit codes (as the README's table):
  0  success
  1  unexpected error (a missing Debian package included)
  2  usage error: a bad option, or an input file that is malformed or not what was acknowledged before
  3  evidence failure: a receipt that does not verify, or a server whose mark or head is behind or
     differs from what it acknowledged, or from the chain the agent computed itself
  4  refused by the server (refused: STATUS REASON: message)
  5  the server cannot be reached
  7  upload: the good lines were committed and the server refused some (listed)"""

SUCCESS, UNEXPECTED, USAGE, EVIDENCE, REFUSED, UNREACHABLE, LINES_REFUSED = 0, 1, 2, 3, 4, 5, 7

_STREAM_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CREDIT_CODE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{18}$")

log = logging.getLogger("metering_agent")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # The README's rule for usage errors: the error and a --help hint, not the whole help.
        self.exit(USAGE, f"{self.prog}: error: {message}\nTry '{self.prog} --help'.\n")


def _stream_id(text: str) -> str:
    if not _STREAM_ID.match(text):
        raise argparse.ArgumentTypeError(f"a stream id is 1 to 64 characters from [A-Za-z0-9._:-], not '{text}'")
    return text


def _credit_code(text: str) -> str:
    if not _CREDIT_CODE.match(text):
        raise argparse.ArgumentTypeError(f"a provider is its 18-character unified social credit code, not '{text}'")
    return text


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number above 0, not '{text}'")
    return int(text)


def _not_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a whole number, not '{text}'")
    return int(text)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    connection = common.add_argument_group("connection")
    connection.add_argument("--server", default=os.environ.get("METERING_SERVER", "http://127.0.0.1:7390"),
                            help="https://HOST:PORT (or http:// on loopback), or several stateless servers on one database, comma-separated, "
                                 "taken in turn; default $METERING_SERVER or http://127.0.0.1:7390")
    connection.add_argument("--api-key", default=os.environ.get("METERING_API_KEY"), help="the provider's API key; default $METERING_API_KEY")
    connection.add_argument("--ca", type=Path, default=os.environ.get("METERING_CA"), help="PEM file of the CA to trust instead of the system's roots; default $METERING_CA")
    connection.add_argument("--client-cert", type=Path, help="PEM client certificate, for a key pinned to it (mutual TLS)")
    connection.add_argument("--client-key", type=Path, help="PEM private key of --client-cert")
    evidence = common.add_argument_group("evidence")
    evidence.add_argument("--provider", type=_credit_code, required=True, help="the provider's credit code, as its key names it (it is in every chain hash)")
    evidence.add_argument("--state-dir", type=Path, default=Path(".metering-agent"),
                          help="where state.json (last acknowledged mark and head per stream) and receipts.jsonl are kept; default ./.metering-agent")
    evidence.add_argument("--public-key", type=Path, action="append", default=[],
                          help="the bureau's published signing key (PEM), repeatable; without it the key is fetched from the server, which trusts the server")
    tools = common.add_argument_group("set-up")
    tools.add_argument("--proto-dir", type=Path, help="the proto/ folder of the repository (default: found beside the agent)")
    tools.add_argument("--build-dir", type=Path, help="where the generated message modules go (default: build/ beside the agent)")
    tools.add_argument("--verbose", action="store_true", help="log every acknowledgement, and a trace on an unexpected error")

    top = _Parser(prog="metering-agent", description="A provider's client of the Metering server, written from proto/ and its documents.",
                  epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    stream = commands.add_parser("stream", parents=[common], help="stream usage records, resuming at the server's committed mark",
                                 description="Streams usage records over IngestService.Stream and keeps every receipt.",
                                 epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    stream.add_argument("--stream", type=_stream_id, required=True, help="the stream id")
    source = stream.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="JSON Lines records in the schema of proto/metering/v1/rawlog-formats.md; line n of records is sequence n")
    source.add_argument("--generate", type=_positive, metavar="N", help="N generated back-to-back five-minute jobs")
    stream.add_argument("--mapping", type=Path, help="--input: LogMapping JSON for lines that give account or gres")
    stream.add_argument("--from", dest="start", help="--generate: start of the first job, RFC 3339 with a zone")
    stream.add_argument("--holder", help="--generate: the voucher holder's credit code")
    stream.add_argument("--model", default="H100-SXM", help="--generate: device catalog key (default H100-SXM)")
    stream.add_argument("--devices", type=_positive, default=8, help="--generate: devices per job (default 8)")
    stream.add_argument("--site", default="sz-nanshan-dc1", help="--generate: the site (default sz-nanshan-dc1)")
    stream.add_argument("--dcgm-url", help="--generate: read DCGM_FI_PROF_SM_ACTIVE from dcgm-exporter (http://HOST:9400/metrics) before sending, "
                        "and give each record the mean of GPUs 0 to --devices - 1 of those it lists (in gpu-index order, "
                        "wrapping round) as sm_active_bp; exit 5 when it does not answer, 2 when it gives no usable figures")
    stream.add_argument("--sm-samples", type=_positive, default=3, help="--dcgm-url: scrapes to average (default 3)")
    stream.add_argument("--sm-sample-seconds", type=_not_negative, default=5, help="--dcgm-url: seconds between scrapes (default 5)")
    stream.add_argument("--batch-records", type=_positive, default=500, help="records per batch, at most the server's batch_records_max (default 500)")
    stream.add_argument("--batches-in-flight", type=_positive, default=4, help="batches sent before their acknowledgement (default 4)")
    stream.add_argument("--pause-ms", type=_not_negative, default=0, help="wait after each acknowledgement, as a paced platform would (default 0)")
    stream.add_argument("--reconnects", type=_not_negative, default=5, help="reconnect this often after a lost connection (default 5)")

    upload = commands.add_parser("upload", parents=[common], help="upload a sacct or JSON Lines file through RawLogService",
                                 description="Uploads a scheduler log; an interrupted or repeated upload commits nothing twice.",
                                 epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    upload.add_argument("file", type=Path, help="the log file")
    upload.add_argument("--stream", type=_stream_id, required=True, help="the stream the records go to (one per log source)")
    upload.add_argument("--format", choices=["sacct", "jsonl"], required=True, help="sacct --parsable2 output, or JSON Lines")
    upload.add_argument("--mapping", type=Path, required=True, help="LogMapping as protobuf JSON (rawlog-formats.md)")
    upload.add_argument("--upload-id", type=_stream_id, help="the upload's id (default: the file's SHA-256 in hex)")
    return top


def _run(arguments: argparse.Namespace) -> int:
    # Imported here so that --help and usage errors work on a machine still missing a package.
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError as error:
        print(f"error: {error.name} is missing: install Debian's python3-grpcio, python3-protobuf and python3-cryptography "
              f"(or run .ci/ensure-python), and run the agent with /usr/bin/python3", file=sys.stderr)
        return UNEXPECTED
    from google.protobuf import json_format

    from . import protos, records
    from .receipts import ReceiptChecker, load_public_key
    from .state import StateFile
    from .stream import StreamSettings, Streamer
    from .transport import CALL_TIMEOUT_S, Endpoint, Services, UsageError, error_from, open_channels
    from .upload import file_sha256, upload

    if not arguments.api_key:
        raise UsageError("no API key: give --api-key or set METERING_API_KEY")
    pb = protos.load(arguments.proto_dir or protos.DEFAULT_PROTO_DIR, arguments.build_dir or protos.DEFAULT_BUILD_DIR)
    state = StateFile(arguments.state_dir)
    trusted = []
    for path in arguments.public_key:
        try:
            trusted.append(load_public_key(path.read_bytes()))
        except (OSError, ValueError) as error:
            raise UsageError(f"--public-key {path}: {error}") from None

    mapping_json = None
    if arguments.mapping is not None:
        try:
            mapping_json = arguments.mapping.read_text(encoding="utf-8")
            mapping_dict = json.loads(mapping_json)
        except (OSError, ValueError) as error:
            raise UsageError(f"--mapping {arguments.mapping}: {error}") from None
    if arguments.command == "stream":
        if arguments.input is not None:
            chosen = records.read_jsonl(arguments.input, mapping_dict if mapping_json else {})
        else:
            if not arguments.start or not arguments.holder:
                raise UsageError("--generate needs --from and --holder")
            try:
                start_ms = records.unix_ms(arguments.start)
            except ValueError as error:
                raise UsageError(f"--from: {error}") from None
            chosen = records.generate(arguments.generate, start_ms, arguments.holder, arguments.model, arguments.devices, arguments.site)
            if arguments.dcgm_url:
                chosen = _with_sm_activity(chosen, arguments)
        if arguments.dcgm_url and arguments.input is not None:
            raise UsageError("--dcgm-url goes with --generate; JSON Lines input gives sm_active_bp itself")
    else:
        try:
            mapping = json_format.Parse(mapping_json, pb["rawlog"].LogMapping())
        except json_format.ParseError as error:
            raise UsageError(f"--mapping {arguments.mapping}: {error}") from None
        if not arguments.file.is_file():
            raise UsageError(f"{arguments.file} is not a file")
        upload_id = arguments.upload_id or file_sha256(arguments.file)

    endpoint = Endpoint(arguments.server, arguments.api_key, arguments.ca, arguments.client_cert, arguments.client_key)
    with contextlib.ExitStack() as channels:
        services = Services([channels.enter_context(channel) for channel in open_channels(endpoint)], arguments.api_key, pb)
        if not trusted:
            try:
                published = services.get_signing_key(pb["audit"].GetSigningKeyRequest(), metadata=services.metadata, timeout=CALL_TIMEOUT_S)
            except Exception as error:  # grpc.RpcError: mapped like every call's
                raise error_from(error) from None
            log.warning("trusting the server's own signing key %s: pin the bureau's published key with --public-key", published.key_id)
            trusted.append(load_public_key(published.public_key_pem.encode("ascii")))
        checker = ReceiptChecker(trusted)

        if arguments.command == "stream":
            settings = StreamSettings(arguments.stream, arguments.batch_records, arguments.batches_in_flight, arguments.pause_ms, arguments.reconnects)
            summary = Streamer(services, arguments.provider, state, checker, settings, chosen).run()
            print(json.dumps({
                "stream_id": summary.stream_id, "records": summary.records, "resumed_after": summary.resumed_after,
                "sent": summary.sent, "replayed": summary.replayed, "committed_sequence": summary.committed_sequence,
                "chain_head": summary.chain_head.hex(), "receipts": str(state.receipts),
            }))
            return SUCCESS

        log_format = pb["rawlog"].SACCT_PARSABLE2 if arguments.format == "sacct" else pb["rawlog"].JSON_LINES
        report = upload(services, arguments.provider, state, checker, arguments.file, arguments.stream, log_format, mapping, upload_id)
        for error in report.errors:
            print(f"line {error.line}: {error.reason}: {error.message}")
        print(json.dumps({
            "upload_id": report.upload_id, "stream_id": report.stream_id, "complete": report.complete,
            "committed_offset": report.committed_offset, "lines": report.lines, "records": report.records,
            "lines_skipped": report.lines_skipped, "lines_duplicate": report.lines_duplicate, "lines_refused": report.lines_refused,
            "committed_sequence": report.committed_sequence, "chain_head": report.chain_head.hex(), "receipts": str(state.receipts),
        }))
        return LINES_REFUSED if report.lines_refused else SUCCESS


def _with_sm_activity(chosen: list, arguments: argparse.Namespace) -> list:
    """The generated records with the exporter's figures, sampled once before anything is sent, so that a resent record is the same record."""
    import dataclasses

    from . import dcgm
    from .transport import Unreachable, UsageError

    try:
        gpu_bp = dcgm.sample(arguments.dcgm_url, arguments.sm_samples, arguments.sm_sample_seconds)
    except dcgm.DcgmError as error:
        raise (Unreachable if error.unreachable else UsageError)(str(error)) from None
    gpus = list(gpu_bp)
    figure = dcgm.mean_bp(gpu_bp, [gpus[index % len(gpus)] for index in range(arguments.devices)])
    return [dataclasses.replace(record, sm_active_bp=figure) for record in chosen]


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return _run(arguments)
    except Exception as error:  # every failure leaves with its exit code and one line
        from .protos import SetupError
        from .receipts import EvidenceError
        from .transport import Refused, Unreachable, UsageError

        codes = [(UsageError, USAGE, "error"), (EvidenceError, EVIDENCE, "EVIDENCE FAILURE"), (Refused, REFUSED, None),
                 (Unreachable, UNREACHABLE, "error"), (SetupError, UNEXPECTED, "error")]
        for kind, code, label in codes:
            if isinstance(error, kind):
                print(str(error) if label is None else f"{label}: {error}", file=sys.stderr)
                return code
        if arguments.verbose:
            log.exception("unexpected error")
        else:
            print(f"unexpected error: {type(error).__name__}: {error} (--verbose shows the trace)", file=sys.stderr)
        return UNEXPECTED
