using System.Net.Http;
using System.Net.Sockets;
using Grpc.Core;
using Metering.Client.Channels;
using Metering.Protocol.V1;
using Metering.Server;
using Npgsql;

namespace Metering.Cli;

/// <summary>
/// The exit codes every `metering` command shares, so that a script can tell a typo from a rule,
/// a rule from a forgery and a forgery from a network fault without reading the text.
/// `metering-probe` is a separate tool with its own table (engine/Metering.Probe/README.md).
/// </summary>
internal static class ExitCodes
{
    public const int Success = 0;

    /// <summary>Anything the other codes do not name: a bug or a fault of this machine.</summary>
    public const int Unexpected = 1;

    /// <summary>A missing, malformed or conflicting option or file, found before anything changed.</summary>
    public const int Usage = 2;

    /// <summary>The evidence does not hold: a broken chain, a receipt or log head that fails, a reconciliation that does not balance.</summary>
    public const int EvidenceFailed = 3;

    /// <summary>
    /// The server answered with a refusal (a gRPC status and an ErrorInfo reason), or the engine's
    /// rule refused a command that opens the database itself (key bootstrap, db migrate --sandbox); nothing changed.
    /// </summary>
    public const int Refused = 4;

    /// <summary>No server answers at the address, or the database cannot be reached.</summary>
    public const int Unreachable = 5;

    /// <summary>The question had nothing to answer: no records to verify or judge, no day to settle, no statement to export.</summary>
    public const int NothingToExamine = 6;

    /// <summary>`ingest-file` committed the good lines but the server refused some lines; the report lists them.</summary>
    public const int LinesRefused = 7;

    /// <summary>The table as `--help` and the README print it.</summary>
    public const string Table = """
        Exit codes (every metering command):
          0  success
          1  unexpected error
          2  usage error: a missing, malformed or conflicting option or file; nothing sent or changed
          3  evidence failure: a broken chain, a receipt or log head that fails, a reconciliation
             that does not balance
          4  refused by the server (or, for commands that open the database, by the engine's rules):
             status and reason printed; nothing changed
          5  the server or the database cannot be reached: one line, --verbose adds the stack trace
          6  nothing to examine: no records to verify or judge, no day to settle
          7  ingest-file committed the good lines and the server refused some (listed)
        """;

    /// <summary>Whether <paramref name="error"/> says the server or the database could not be reached, rather than what it answered.</summary>
    public static bool IsUnreachable(Exception error) => error switch
    {
        // A call that never reached a server carries the transport's exception (Unavailable for a
        // refused connection, Internal for a failed TLS handshake); a server's refusal carries none.
        RpcException rpc => rpc.InnerException is HttpRequestException or SocketException || IsDatabaseUnavailable(rpc),
        NpgsqlException npgsql => npgsql.SqlState is null,
        SocketException or HttpRequestException => true,
        _ => error.InnerException is { } inner && IsUnreachable(inner),
    };

    /// <summary>Whether the server answered that it cannot reach its database (UNAVAILABLE / DATABASE_UNAVAILABLE): a fault to retry, not a refusal.</summary>
    public static bool IsDatabaseUnavailable(RpcException e) =>
        MeteringChannel.ReasonOf(e) == ProtocolNames.Of(IngestRefusal.DatabaseUnavailable);
}
