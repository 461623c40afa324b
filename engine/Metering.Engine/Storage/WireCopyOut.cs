using System.Buffers.Binary;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>
/// Where and as whom a <see cref="WireCopyOut"/> connects: the parts of an Npgsql connection
/// string that the minimal frontend understands. <see cref="TryFrom"/> refuses anything else
/// (TLS, several hosts, Kerberos, connection options), and the caller then reads through Npgsql.
/// </summary>
public sealed record WireEndpoint(string Host, int Port, string Username, string? Password, string Database, int ConnectTimeoutSeconds)
{
    /// <summary>Whether Host is the directory of a Unix-domain socket rather than a TCP host name.</summary>
    public bool IsUnixSocket => Host.StartsWith('/');

    /// <summary>
    /// Longest wait for the server to send anything once the query is sent, in seconds (the
    /// connection string's Command Timeout); 0 waits for ever.
    /// </summary>
    public int CommandTimeoutSeconds { get; init; }

    /// <summary>Seconds of TCP idleness before keepalive probes (the connection string's Tcp Keepalive Time); 0 leaves the system's default.</summary>
    public int KeepAliveSeconds { get; init; }

    /// <summary>The endpoint of a connection string, or null with the reason the fast path cannot serve it.</summary>
    public static WireEndpoint? TryFrom(string connectionString, out string? whyNot)
    {
        NpgsqlConnectionStringBuilder builder;
        try
        {
            builder = new NpgsqlConnectionStringBuilder(connectionString);
        }
        catch (ArgumentException e)
        {
            whyNot = $"the connection string does not parse: {e.Message}";
            return null;
        }

        whyNot = null;
        if (string.IsNullOrEmpty(builder.Host) || builder.Host.Contains(',', StringComparison.Ordinal))
        {
            whyNot = "the connection string names no host, or several";
        }
        else if (!builder.Host.StartsWith('/') && builder.Host.Contains(':', StringComparison.Ordinal))
        {
            whyNot = "the host carries its own port";
        }
        else if (string.IsNullOrEmpty(builder.Username))
        {
            whyNot = "the connection string names no user";
        }
        else if (!builder.Host.StartsWith('/') && builder.SslMode != SslMode.Disable)
        {
            // TLS stays with Npgsql, which validates certificates as configured; with Allow or
            // Prefer it may end up encrypted, so only Disable is certain to stay in the clear.
            whyNot = $"TCP connections with SSL Mode={builder.SslMode} are read through Npgsql";
        }
        else if (!string.IsNullOrEmpty(builder.Options) || !string.IsNullOrEmpty(builder.SearchPath) || !string.IsNullOrEmpty(builder.Passfile)
            || !string.IsNullOrEmpty(builder.KerberosServiceName) && builder.KerberosServiceName != "postgres")
        {
            whyNot = "the connection string sets options, a search path, a passfile or Kerberos";
        }

        // Npgsql's Timeout=0 waits for ever; so does this reader.
        return whyNot is null
            ? new WireEndpoint(builder.Host!, builder.Port, builder.Username!, builder.Password, builder.Database ?? builder.Username!, builder.Timeout)
            {
                CommandTimeoutSeconds = builder.CommandTimeout,
                KeepAliveSeconds = builder.TcpKeepAliveTime,
            }
            : null;
    }

    /// <summary>Everything but the password, which must never reach a log.</summary>
    public override string ToString() =>
        $"WireEndpoint {{ Host = {Host}, Port = {Port}, Username = {Username}, Database = {Database}, Password = {(Password is null ? "none" : "set")} }}";
}

/// <summary>The server asked for something the minimal frontend does not do; read through Npgsql instead.</summary>
public sealed class WireUnsupportedException(string message) : Exception(message);

/// <summary>PostgreSQL answered a statement of the COPY with an error.</summary>
public sealed class WireServerException(string severity, string sqlState, string message)
    : Exception($"PostgreSQL {severity} {sqlState}: {message}")
{
    public string SqlState => sqlState;
}

/// <summary>
/// A minimal PostgreSQL frontend (protocol 3.0) for one job: run one simple query that ends in
/// COPY ... TO STDOUT and hand the COPY data over as a read-only stream.
///
/// Npgsql's raw COPY stream returns at most one CopyData message per read, and PostgreSQL sends
/// one message per row; at a few hundred bytes a row, that costs about as much client CPU as
/// producing the row costs the server (bench/RESULTS.md, chain verification). This reader keeps
/// a 1 MiB receive buffer, walks the messages in it and copies the payloads of as many as fit
/// into each read, so the per-row cost is a header check and a copy.
///
/// It authenticates by trust, cleartext password, MD5 or SCRAM-SHA-256 (without channel
/// binding, so never over TLS); it does no TLS. Anything else raises
/// <see cref="WireUnsupportedException"/> before any statement runs. Disposing closes the
/// socket, which ends the server's transaction (it never writes).
///
/// Every call blocks its thread, ReadAsync included. PostgreSQL sends in 8 KiB pieces, and
/// waiting for each of them through the asynchronous socket engine cost more client CPU than
/// the rows themselves: the thread pool's workers spin while they wait for the next
/// completion, on the very cores the server needs. A caller that reads a long COPY gives it a
/// thread of its own (the chain verifier does).
/// </summary>
public sealed class WireCopyOut : Stream
{
    /// <summary>The receive buffer; a message longer than this is streamed through it.</summary>
    public const int BufferBytes = 1024 * 1024;

    /// <summary>The longest message other than CopyData that the reader accepts.</summary>
    public const int ControlMessageBytesMax = 64 * 1024;

    private const int ProtocolVersion3 = 196_608;

    private readonly Socket _socket;
    private readonly byte[] _buffer = new byte[BufferBytes];
    private int _start;
    private int _end;

    // Payload bytes of the current CopyData message not yet handed over.
    private int _payloadLeft;
    private bool _copyDone;

    private CancellationTokenRegistration _cancellation;
    private CancellationToken _cancellationToken;
    private int _commandTimeoutSeconds;
    private SemaphoreSlim? _slots;

    private WireCopyOut(Socket socket) => _socket = socket;

    /// <summary>
    /// Connects, authenticates, sends <paramref name="simpleQuery"/> (statements separated by
    /// semicolons, the last a COPY ... TO STDOUT) and returns once the COPY has started. Blocks
    /// the calling thread. Cancelling <paramref name="cancellationToken"/> closes the socket,
    /// which also ends a read in progress.
    /// </summary>
    /// <param name="slots">
    /// When given, a slot of it is taken before connecting (waiting while all are taken) and
    /// given back when the reader is disposed or fails to open: the limit on connections that
    /// the Npgsql pool does not count (<see cref="Database.WireReaderSlotsOf"/>).
    /// </param>
    /// <exception cref="WireUnsupportedException">The server wants an authentication method or setting this reader does not handle.</exception>
    /// <exception cref="WireServerException">The server refused the connection or a statement.</exception>
    public static WireCopyOut Open(WireEndpoint endpoint, string simpleQuery, CancellationToken cancellationToken, SemaphoreSlim? slots = null)
    {
        Socket socket = endpoint.IsUnixSocket
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        var reader = new WireCopyOut(socket);
        try
        {
            slots?.Wait(cancellationToken);
            reader._slots = slots;
            reader._cancellationToken = cancellationToken;
            reader._cancellation = cancellationToken.Register(static state => ((Socket)state!).Dispose(), socket);
            int timeoutMs = endpoint.ConnectTimeoutSeconds > 0 ? endpoint.ConnectTimeoutSeconds * 1_000 : Timeout.Infinite;
            // A synchronous connect, run aside so that it can time out: one asynchronous
            // operation would tie the socket to the asynchronous engine for good, and its
            // blocking receives would then wait through that engine's threads.
            Task connect = Task.Run(() =>
            {
                if (endpoint.IsUnixSocket)
                {
                    socket.Connect(new UnixDomainSocketEndPoint(Path.Combine(endpoint.Host, $".s.PGSQL.{endpoint.Port}")));
                }
                else
                {
                    socket.Connect(endpoint.Host, endpoint.Port);
                }
            }, cancellationToken);
            if (Task.WaitAny([connect], timeoutMs, cancellationToken) < 0)
            {
                throw new TimeoutException($"PostgreSQL at {endpoint.Host}:{endpoint.Port} did not accept a connection within {endpoint.ConnectTimeoutSeconds} s.");
            }

            // The connect's own exception (refused, unknown host), not an AggregateException.
            connect.GetAwaiter().GetResult();

            socket.ReceiveBufferSize = BufferBytes;
            if (!endpoint.IsUnixSocket)
            {
                // A peer that vanishes without a word must not hold a reader for ever.
                socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
                if (endpoint.KeepAliveSeconds > 0)
                {
                    socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, endpoint.KeepAliveSeconds);
                }
            }

            socket.ReceiveTimeout = Math.Max(timeoutMs, 0);
            socket.SendTimeout = Math.Max(timeoutMs, 0);
            reader.Start(endpoint);
            // From here the command timeout applies to each wait for the server, as Npgsql
            // applies it to each read of a COPY: a query waiting on a lock, or rows that stop
            // coming, end with a TimeoutException.
            reader._commandTimeoutSeconds = endpoint.CommandTimeoutSeconds;
            socket.ReceiveTimeout = endpoint.CommandTimeoutSeconds * 1_000;
            reader.Query(simpleQuery);
            return reader;
        }
        catch (Exception e) when (cancellationToken.IsCancellationRequested && e is not OperationCanceledException)
        {
            reader.Dispose();
            throw new OperationCanceledException("The COPY was cancelled while it started.", e, cancellationToken);
        }
        catch
        {
            reader.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A string as an SQL literal for the simple query: quotes doubled. Safe because the reader
    /// refuses a server without standard_conforming_strings, forces UTF-8, and text holds no NUL.
    /// </summary>
    public static string Literal(string value) => "'" + value.Replace("'", "''", StringComparison.Ordinal) + "'";

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    /// <summary>
    /// Copies COPY data into <paramref name="destination"/>: the payloads of as many CopyData
    /// messages as are already received and fit; waits for the socket only when none is. 0 once
    /// the COPY is done.
    /// </summary>
    public override int Read(Span<byte> destination)
    {
        while (true)
        {
            int copied = CopyBuffered(destination);
            if (copied > 0 || _copyDone || destination.IsEmpty)
            {
                return copied;
            }

            if (!Receive())
            {
                throw new IOException("PostgreSQL closed the connection in the middle of the COPY.");
            }
        }
    }

    /// <summary>The same as <see cref="Read(Span{byte})"/>, and it blocks just the same; it exists for readers written against streams.</summary>
    public override ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return ValueTask.FromResult(Read(destination.Span));
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _cancellation.Dispose();
            if (_copyDone)
            {
                // A finished COPY says goodbye, so the server does not log an unexpected end of
                // file; one abandoned midway just closes, which ends its statement as well.
                try
                {
                    Send([(byte)'X', 0, 0, 0, 4]);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    // The server is gone already.
                }
            }

            _socket.Dispose();
            Interlocked.Exchange(ref _slots, null)?.Release();
        }

        base.Dispose(disposing);
    }

    /// <summary>Walks the received messages; copies CopyData payloads, stops at CopyDone, raises errors.</summary>
    private int CopyBuffered(Span<byte> destination)
    {
        int copied = 0;
        while (copied < destination.Length && !_copyDone)
        {
            if (_payloadLeft > 0)
            {
                int take = Math.Min(Math.Min(_payloadLeft, _end - _start), destination.Length - copied);
                if (take == 0)
                {
                    break;
                }

                _buffer.AsSpan(_start, take).CopyTo(destination[copied..]);
                _start += take;
                _payloadLeft -= take;
                copied += take;
                continue;
            }

            if (_end - _start < 5)
            {
                break;
            }

            byte type = _buffer[_start];
            int length = BinaryPrimitives.ReadInt32BigEndian(_buffer.AsSpan(_start + 1));
            if (length < 4)
            {
                throw new InvalidDataException($"PostgreSQL sent a message of type '{(char)type}' with length {length}.");
            }

            if (type == (byte)'d')
            {
                // The payload may be longer than the buffer: it is handed over as it arrives.
                _start += 5;
                _payloadLeft = length - 4;
                continue;
            }

            if (!HasWholeMessage(length))
            {
                break;
            }

            ReadOnlySpan<byte> body = _buffer.AsSpan(_start + 5, length - 4);
            _start += 1 + length;
            switch ((char)type)
            {
                case 'c':
                    _copyDone = true;
                    break;
                case 'E':
                    throw ServerError(body);
                case 'N' or 'S' or 'A':
                    // Notices, parameter changes and notifications do not concern the COPY.
                    break;
                default:
                    throw new InvalidDataException($"PostgreSQL sent a message of type '{(char)type}' in the middle of the COPY.");
            }
        }

        return copied;
    }

    private bool HasWholeMessage(int length)
    {
        if (length > ControlMessageBytesMax)
        {
            throw new InvalidDataException($"PostgreSQL sent a {length}-byte control message; at most {ControlMessageBytesMax} are expected.");
        }

        return _end - _start >= 1 + length;
    }

    /// <summary>Moves the unread bytes to the front and receives more; false when the server closed the connection.</summary>
    private bool Receive()
    {
        if (_start > 0)
        {
            _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
            _end -= _start;
            _start = 0;
        }

        int received;
        try
        {
            received = _socket.Receive(_buffer.AsSpan(_end), SocketFlags.None);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException && _cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException("The COPY was cancelled.", e, _cancellationToken);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut && _commandTimeoutSeconds > 0)
        {
            throw new TimeoutException($"PostgreSQL sent nothing for {_commandTimeoutSeconds} s (the connection string's Command Timeout).", e);
        }

        _end += received;
        return received > 0;
    }

    /// <summary>The next whole control message: its type and body (valid until the next receive).</summary>
    private (byte Type, int Start, int Length) NextMessage()
    {
        while (true)
        {
            if (_end - _start >= 5)
            {
                int length = BinaryPrimitives.ReadInt32BigEndian(_buffer.AsSpan(_start + 1));
                if (length < 4)
                {
                    throw new InvalidDataException($"PostgreSQL sent a message with length {length}.");
                }

                if (HasWholeMessage(length))
                {
                    byte type = _buffer[_start];
                    int body = _start + 5;
                    _start += 1 + length;
                    return (type, body, length - 4);
                }
            }

            if (!Receive())
            {
                throw new IOException("PostgreSQL closed the connection before the COPY started.");
            }
        }
    }

    private void Start(WireEndpoint endpoint)
    {
        var startup = new MessageWriter(0);
        startup.Int32(ProtocolVersion3);
        startup.CString("user").CString(endpoint.Username);
        startup.CString("database").CString(endpoint.Database);
        startup.CString("client_encoding").CString("UTF8");
        startup.CString("application_name").CString("metering-verify");
        startup.Byte(0);
        Send(startup.Finish());

        string? clientFirstBare = null;
        string? clientNonce = null;
        byte[]? serverSignature = null;
        bool serverVerified = false;
        while (true)
        {
            var (type, start, length) = NextMessage();
            ReadOnlySpan<byte> body = _buffer.AsSpan(start, length);
            switch ((char)type)
            {
                case 'R':
                    if (body.Length < 4)
                    {
                        throw new InvalidDataException($"PostgreSQL sent an authentication message of {body.Length} bytes.");
                    }

                    int code = BinaryPrimitives.ReadInt32BigEndian(body);
                    if (clientFirstBare is not null && code is not (0 or 11 or 12))
                    {
                        throw new InvalidDataException($"PostgreSQL asked for authentication method {code} in the middle of a SCRAM exchange.");
                    }

                    switch (code)
                    {
                        case 0:
                            // Once SCRAM has started, only a server that proved it knows the
                            // password may let us in (as libpq insists).
                            if (clientFirstBare is not null && !serverVerified)
                            {
                                throw new InvalidDataException("PostgreSQL ended a SCRAM exchange without proving that it knows the password.");
                            }

                            break;
                        case 3:
                            Send(new MessageWriter((byte)'p').CString(PasswordOf(endpoint)).Finish());
                            break;
                        case 5:
                            if (body.Length < 8)
                            {
                                throw new InvalidDataException("PostgreSQL asked for an MD5 password without a salt.");
                            }

                            Send(new MessageWriter((byte)'p').CString(Md5Password(endpoint.Username, PasswordOf(endpoint), body.Slice(4, 4))).Finish());
                            break;
                        case 10:
                            if (!Mechanisms(body[4..]).Contains("SCRAM-SHA-256"))
                            {
                                throw new WireUnsupportedException("the server offers no SASL mechanism but SCRAM-SHA-256 with channel binding");
                            }

                            PasswordOf(endpoint);
                            clientNonce = Convert.ToBase64String(RandomNumberGenerator.GetBytes(18));
                            clientFirstBare = "n=,r=" + clientNonce;
                            byte[] first = Encoding.ASCII.GetBytes("n,," + clientFirstBare);
                            Send(new MessageWriter((byte)'p').CString("SCRAM-SHA-256").Int32(first.Length).Bytes(first).Finish());
                            break;
                        case 11:
                            if (clientFirstBare is null || clientNonce is null)
                            {
                                throw new InvalidDataException("PostgreSQL continued a SASL exchange that was not started.");
                            }

                            (byte[] final, serverSignature) = ScramFinal(PasswordOf(endpoint), clientFirstBare, clientNonce, Encoding.UTF8.GetString(body[4..]));
                            Send(new MessageWriter((byte)'p').Bytes(final).Finish());
                            break;
                        case 12:
                            string outcome = Encoding.UTF8.GetString(body[4..]);
                            if (serverSignature is null || !outcome.StartsWith("v=", StringComparison.Ordinal)
                                || !CryptographicOperations.FixedTimeEquals(FromBase64(outcome[2..].Split(',')[0]), serverSignature))
                            {
                                throw new InvalidDataException("The server's SCRAM signature does not match: it does not know the password.");
                            }

                            serverVerified = true;
                            break;
                        default:
                            throw new WireUnsupportedException($"the server asks for authentication method {code}");
                    }

                    break;
                case 'S':
                    // standard_conforming_strings must be on for the quoted literals of the query.
                    int nameEnd = body.IndexOf((byte)0);
                    if (nameEnd > 0 && Encoding.ASCII.GetString(body[..nameEnd]) == "standard_conforming_strings"
                        && !body[(nameEnd + 1)..].StartsWith("on"u8))
                    {
                        throw new WireUnsupportedException("standard_conforming_strings is off");
                    }

                    break;
                case 'K' or 'N':
                    break;
                case 'E':
                    throw ServerError(body);
                case 'Z':
                    return;
                default:
                    throw new InvalidDataException($"PostgreSQL sent a message of type '{(char)type}' during start-up.");
            }
        }
    }

    private void Query(string simpleQuery)
    {
        if (simpleQuery.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException("A query cannot contain a NUL character.", nameof(simpleQuery));
        }

        Send(new MessageWriter((byte)'Q').CString(simpleQuery).Finish());
        while (true)
        {
            var (type, start, length) = NextMessage();
            switch ((char)type)
            {
                case 'H':
                    // CopyOutResponse: the data follows.
                    return;
                case 'E':
                    throw ServerError(_buffer.AsSpan(start, length));
                case 'Z':
                    throw new InvalidDataException("The query ended without starting a COPY.");
                case 'C' or 'T' or 'D' or 'N' or 'S' or 'I':
                    // The statements before the COPY: their results are not needed.
                    break;
                default:
                    throw new InvalidDataException($"PostgreSQL sent a message of type '{(char)type}' before the COPY.");
            }
        }
    }

    private void Send(ReadOnlySpan<byte> message)
    {
        while (!message.IsEmpty)
        {
            message = message[_socket.Send(message, SocketFlags.None)..];
        }
    }

    private static string PasswordOf(WireEndpoint endpoint) =>
        endpoint.Password ?? throw new WireUnsupportedException("the server asks for a password and the connection string has none");

    private static HashSet<string> Mechanisms(ReadOnlySpan<byte> list)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        while (!list.IsEmpty && list[0] != 0)
        {
            int end = list.IndexOf((byte)0);
            if (end < 0)
            {
                break;
            }

            names.Add(Encoding.ASCII.GetString(list[..end]));
            list = list[(end + 1)..];
        }

        return names;
    }

    /// <summary>"md5" + md5hex(md5hex(password + user) + salt), as the MD5 method defines.</summary>
    private static string Md5Password(string user, string password, ReadOnlySpan<byte> salt)
    {
        string inner = Convert.ToHexStringLower(MD5.HashData(Encoding.UTF8.GetBytes(password + user)));
        byte[] outer = [.. Encoding.ASCII.GetBytes(inner), .. salt];
        return "md5" + Convert.ToHexStringLower(MD5.HashData(outer));
    }

    /// <summary>The client-final message of SCRAM-SHA-256 (RFC 5802, RFC 7677) and the server signature to expect.</summary>
    private static (byte[] ClientFinal, byte[] ServerSignature) ScramFinal(string password, string clientFirstBare, string clientNonce, string serverFirst)
    {
        string? nonce = null, salt = null;
        int iterations = 0;
        foreach (string attribute in serverFirst.Split(','))
        {
            if (attribute.StartsWith("r=", StringComparison.Ordinal))
            {
                nonce = attribute[2..];
            }
            else if (attribute.StartsWith("s=", StringComparison.Ordinal))
            {
                salt = attribute[2..];
            }
            else if (attribute.StartsWith("i=", StringComparison.Ordinal))
            {
                _ = int.TryParse(attribute[2..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out iterations);
            }
        }

        if (nonce is null || salt is null || iterations is < 1 or > 10_000_000 || !nonce.StartsWith(clientNonce, StringComparison.Ordinal))
        {
            throw new InvalidDataException("The server's SCRAM challenge is malformed.");
        }

        // PostgreSQL applies SASLprep to the password; for passwords of printable ASCII, as the
        // engine's are, that changes nothing.
        byte[] salted = Rfc2898DeriveBytes.Pbkdf2(Encoding.UTF8.GetBytes(password), FromBase64(salt), iterations, HashAlgorithmName.SHA256, 32);
        byte[] clientKey = HMACSHA256.HashData(salted, "Client Key"u8);
        byte[] storedKey = SHA256.HashData(clientKey);
        string withoutProof = "c=biws,r=" + nonce;
        byte[] authMessage = Encoding.UTF8.GetBytes(clientFirstBare + "," + serverFirst + "," + withoutProof);
        byte[] proof = HMACSHA256.HashData(storedKey, authMessage);
        for (int i = 0; i < proof.Length; i++)
        {
            proof[i] ^= clientKey[i];
        }

        byte[] serverSignature = HMACSHA256.HashData(HMACSHA256.HashData(salted, "Server Key"u8), authMessage);
        return (Encoding.ASCII.GetBytes(withoutProof + ",p=" + Convert.ToBase64String(proof)), serverSignature);
    }

    private static byte[] FromBase64(string text)
    {
        try
        {
            return Convert.FromBase64String(text);
        }
        catch (FormatException e)
        {
            throw new InvalidDataException("PostgreSQL sent SCRAM data that is not base64.", e);
        }
    }

    private static WireServerException ServerError(ReadOnlySpan<byte> body)
    {
        string severity = "ERROR", code = "", message = "";
        while (!body.IsEmpty && body[0] != 0)
        {
            byte field = body[0];
            int end = body[1..].IndexOf((byte)0);
            if (end < 0)
            {
                break;
            }

            string value = Encoding.UTF8.GetString(body.Slice(1, end));
            switch ((char)field)
            {
                case 'V':
                    severity = value;
                    break;
                case 'C':
                    code = value;
                    break;
                case 'M':
                    message = value;
                    break;
            }

            body = body[(end + 2)..];
        }

        return new WireServerException(severity, code, message);
    }

    /// <summary>Builds one frontend message: a type byte (none for the start-up message) and a length that counts itself.</summary>
    private sealed class MessageWriter
    {
        private readonly MemoryStream _bytes = new();
        private readonly int _lengthAt;

        public MessageWriter(byte type)
        {
            if (type != 0)
            {
                _bytes.WriteByte(type);
            }

            _lengthAt = (int)_bytes.Length;
            Int32(0);
        }

        public MessageWriter Byte(byte value)
        {
            _bytes.WriteByte(value);
            return this;
        }

        public MessageWriter Int32(int value)
        {
            Span<byte> bytes = stackalloc byte[4];
            BinaryPrimitives.WriteInt32BigEndian(bytes, value);
            _bytes.Write(bytes);
            return this;
        }

        public MessageWriter Bytes(ReadOnlySpan<byte> value)
        {
            _bytes.Write(value);
            return this;
        }

        public MessageWriter CString(string value)
        {
            _bytes.Write(Encoding.UTF8.GetBytes(value));
            _bytes.WriteByte(0);
            return this;
        }

        public byte[] Finish()
        {
            byte[] message = _bytes.ToArray();
            BinaryPrimitives.WriteInt32BigEndian(message.AsSpan(_lengthAt), message.Length - _lengthAt);
            return message;
        }
    }
}
