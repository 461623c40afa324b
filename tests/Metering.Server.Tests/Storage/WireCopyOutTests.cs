using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Storage;
using Metering.Server.Tests.Audit;
using Metering.Server.Tests.Infrastructure;
using Metering.Tests.Shared;
using Npgsql;

namespace Metering.Server.Tests.Storage;

/// <summary>The wire COPY reader against the real embedded PostgreSQL: the bytes, the logins, the errors, and the verifier on top.</summary>
[Collection(PostgresCollection.Name)]
public sealed class WireCopyOutTests(PostgresFixture postgres)
{
    [Fact]
    public async Task It_hands_over_the_same_bytes_as_npgsql_including_a_row_longer_than_its_buffer()
    {
        // Three million bytes in one row: the payload streams through the 1 MiB buffer.
        const string Copy = "COPY (SELECT g, md5(g::text), CASE WHEN g = 7 THEN repeat('x', 3000000) END FROM generate_series(1, 20000) g) TO STDOUT (FORMAT BINARY)";
        string connectionString = await postgres.CreateDatabaseAsync();
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(connectionString);

        byte[] viaNpgsql;
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
        await using (NpgsqlRawCopyStream stream = await connection.BeginRawBinaryCopyAsync(Copy))
        {
            viaNpgsql = await ReadAllAsync(stream);
        }

        WireEndpoint endpoint = Database.WireEndpointOf(dataSource, out string? whyNot) ?? throw new InvalidOperationException(whyNot);
        byte[] viaWire;
        await using (WireCopyOut wire = WireCopyOut.Open(endpoint, Copy, CancellationToken.None))
        {
            viaWire = await ReadAllAsync(wire);
        }

        Assert.True(viaNpgsql.Length > 3_000_000);
        Assert.Equal(viaNpgsql, viaWire);
    }

    [Fact]
    public async Task A_statement_the_server_refuses_raises_its_sqlstate()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        WireEndpoint endpoint = Database.WireEndpointOf(dataSource, out _)!;

        var before = Assert.Throws<WireServerException>(() =>
            WireCopyOut.Open(endpoint, "COPY (SELECT * FROM no_such_table) TO STDOUT (FORMAT BINARY)", CancellationToken.None));
        Assert.Equal("42P01", before.SqlState);

        // An error after rows have gone out arrives in the middle of the data.
        await using WireCopyOut wire = WireCopyOut.Open(endpoint, "COPY (SELECT 1 / (g - 5000) FROM generate_series(1, 10000) g) TO STDOUT (FORMAT BINARY)", CancellationToken.None);
        var during = await Assert.ThrowsAsync<WireServerException>(() => ReadAllAsync(wire));
        Assert.Equal("22012", during.SqlState);
    }

    [Fact]
    public async Task Cancelling_ends_a_read_that_waits_for_rows()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        WireEndpoint endpoint = Database.WireEndpointOf(dataSource, out _)!;
        using var cancel = new CancellationTokenSource();
        // The first row is larger than PostgreSQL's 8 KiB send buffer, so the COPY starts and
        // that row arrives at once; the second comes only after a minute.
        await using WireCopyOut wire = WireCopyOut.Open(endpoint, "COPY (SELECT g, CASE WHEN g = 1 THEN repeat('x', 20000) ELSE pg_sleep(60)::text END FROM generate_series(1, 2) g) TO STDOUT", cancel.Token);
        byte[] first = new byte[16 * 1024];
        Assert.True(wire.Read(first) > 0);
        Task<byte[]> rest = Task.Run(() => ReadAllAsync(wire));

        await Task.Delay(300);
        Assert.False(rest.IsCompleted);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await cancel.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => rest);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"the read ended {clock.Elapsed} after the cancellation");
    }

    [Fact]
    public async Task A_query_that_waits_longer_than_the_command_timeout_ends_with_a_timeout()
    {
        var builder = new NpgsqlConnectionStringBuilder(await postgres.CreateDatabaseAsync()) { CommandTimeout = 1 };
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(builder.ConnectionString);
        WireEndpoint endpoint = Database.WireEndpointOf(dataSource, out _)!;

        var clock = System.Diagnostics.Stopwatch.StartNew();
        var error = Assert.Throws<TimeoutException>(() => WireCopyOut.Open(endpoint, "COPY (SELECT pg_sleep(30)) TO STDOUT", CancellationToken.None));

        Assert.Contains("Command Timeout", error.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"the timeout took {clock.Elapsed}");
    }

    [Fact]
    public void A_server_that_is_not_there_is_a_socket_error()
    {
        var endpoint = new WireEndpoint(Path.Combine(Path.GetTempPath(), "no-postgres-here"), 5432, "metering", null, "metering", 5);

        Assert.Throws<System.Net.Sockets.SocketException>(() => WireCopyOut.Open(endpoint, "COPY (SELECT 1) TO STDOUT", CancellationToken.None));
    }

    [Fact]
    public async Task Readers_wait_for_a_free_slot_and_give_it_back_whatever_happens()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        WireEndpoint endpoint = Database.WireEndpointOf(dataSource, out _)!;
        SemaphoreSlim slots = Database.WireReaderSlotsOf(dataSource);

        // Every slot taken: a reader waits, and its cancellation ends the wait without taking one.
        for (int i = 0; i < Database.WireReadersMax; i++)
        {
            slots.Wait();
        }

        using (var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300)))
        {
            Assert.ThrowsAny<OperationCanceledException>(() => WireCopyOut.Open(endpoint, "COPY (SELECT 1) TO STDOUT", cancel.Token, slots));
        }

        Assert.Equal(0, slots.CurrentCount);
        slots.Release(Database.WireReadersMax);

        // A reader read to the end, one refused by the server and one disposed midway each give theirs back.
        await using (WireCopyOut done = WireCopyOut.Open(endpoint, "COPY (SELECT 1) TO STDOUT", CancellationToken.None, slots))
        {
            Assert.Equal(Database.WireReadersMax - 1, slots.CurrentCount);
            await ReadAllAsync(done);
        }

        Assert.Throws<WireServerException>(() => WireCopyOut.Open(endpoint, "COPY (SELECT * FROM no_such_table) TO STDOUT", CancellationToken.None, slots));
        await using (WireCopyOut midway = WireCopyOut.Open(endpoint, "COPY (SELECT g FROM generate_series(1, 100000) g) TO STDOUT", CancellationToken.None, slots))
        {
            Assert.True(midway.Read(new byte[16]) > 0);
        }

        Assert.Equal(Database.WireReadersMax, slots.CurrentCount);
    }

    [Fact]
    public async Task A_query_that_starts_no_copy_is_refused()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        WireEndpoint endpoint = Database.WireEndpointOf(dataSource, out _)!;

        var error = Assert.Throws<InvalidDataException>(() => WireCopyOut.Open(endpoint, "SELECT 1", CancellationToken.None));

        Assert.Contains("without starting a COPY", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("scram-sha-256")]
    [InlineData("md5")]
    [InlineData("password")]
    public async Task A_password_login_reads_and_a_wrong_password_is_refused(string method)
    {
        string role = $"wire_{method.Replace("-", "", StringComparison.Ordinal)}_{Environment.ProcessId}";
        string connectionString = await postgres.CreateDatabaseAsync();
        await using (NpgsqlDataSource admin = Database.CreateDataSource(connectionString))
        await using (NpgsqlConnection connection = await admin.OpenConnectionAsync())
        {
            // md5 logins need the password stored as md5; the others take SCRAM verifiers.
            await connection.ExecuteAsync($"SET password_encryption = '{(method == "md5" ? "md5" : "scram-sha-256")}'; DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'Right-Horse-Battery'");
        }

        await RequireMethodAsync(connectionString, role, method);
        var builder = new NpgsqlConnectionStringBuilder(connectionString) { Username = role, Password = "Right-Horse-Battery" };
        await using (NpgsqlDataSource asRole = Database.CreateDataSource(builder.ConnectionString))
        {
            WireEndpoint endpoint = Database.WireEndpointOf(asRole, out _)!;
            await using WireCopyOut wire = WireCopyOut.Open(endpoint, "COPY (SELECT current_user::text) TO STDOUT", CancellationToken.None);
            Assert.Equal(role + "\n", System.Text.Encoding.UTF8.GetString(await ReadAllAsync(wire)));
        }

        builder.Password = "Wrong-Horse-Battery";
        await using NpgsqlDataSource wrong = Database.CreateDataSource(builder.ConnectionString);
        var refused = Assert.Throws<WireServerException>(() => WireCopyOut.Open(Database.WireEndpointOf(wrong, out _)!, "COPY (SELECT 1) TO STDOUT", CancellationToken.None));
        Assert.Equal("28P01", refused.SqlState);

        // Without a password the wire reader cannot log in, and says so in a way that lets a verifier turn to Npgsql.
        builder.Password = null;
        await using NpgsqlDataSource none = Database.CreateDataSource(builder.ConnectionString);
        Assert.Throws<WireUnsupportedException>(() => WireCopyOut.Open(Database.WireEndpointOf(none, out _)!, "COPY (SELECT 1) TO STDOUT", CancellationToken.None));
    }

    [Fact]
    public async Task Both_transports_verify_to_the_same_head_and_find_the_same_break()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        byte[] head = await scene.StreamAsync("cluster-a", AuditScene.Records(1, 3_000, AuditScene.EarlyStartMs));
        var limits = new VerifierLimits { ParallelReadersMax = 3, SegmentRecordsMin = 1_000 };
        var wire = new ChainVerifier(scene.DataSource, limits with { Transport = CopyTransport.Wire });
        var npgsql = new ChainVerifier(scene.DataSource, limits with { Transport = CopyTransport.Npgsql });

        ChainVerification intactWire = await wire.VerifyStreamAsync(TestRecords.Provider, "cluster-a");
        ChainVerification intactNpgsql = await npgsql.VerifyStreamAsync(TestRecords.Provider, "cluster-a");
        Assert.True(intactWire.Intact, intactWire.Evidence);
        Assert.Equal(head, intactWire.ComputedHead);
        Assert.Equal((intactNpgsql.RecordsChecked, intactNpgsql.CanonicalBytes), (intactWire.RecordsChecked, intactWire.CanonicalBytes));

        // A change in the second of three segments, and one to the record the third starts from.
        await scene.TamperAsync($"UPDATE usage_records SET site = 'sz-elsewhere' WHERE provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-a' AND sequence IN (1500, 2000)");
        ChainVerification brokenWire = await wire.VerifyStreamAsync(TestRecords.Provider, "cluster-a");
        ChainVerification brokenNpgsql = await npgsql.VerifyStreamAsync(TestRecords.Provider, "cluster-a");
        Assert.Equal(1500UL, brokenWire.FirstBrokenSequence);
        Assert.Equal(brokenNpgsql.Break, brokenWire.Break);
        Assert.Equal(brokenNpgsql.RecordsChecked, brokenWire.RecordsChecked);
    }

    [Fact]
    public async Task A_server_the_wire_reader_turns_away_is_read_through_npgsql_with_the_same_result()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        byte[] head = await scene.StreamAsync("cluster-a", AuditScene.Records(1, 2_500, AuditScene.EarlyStartMs));
        string role = $"wire_legacy_{Environment.ProcessId}";
        await using (NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync())
        {
            // A role whose sessions quote strings the old way: the wire reader's literals would not be safe.
            await connection.ExecuteAsync($"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; "
                + $"ALTER ROLE {role} SET standard_conforming_strings = off");
        }

        var asRole = new NpgsqlConnectionStringBuilder(scene.Server.ConnectionString) { Username = role };
        await using NpgsqlDataSource legacy = Database.CreateDataSource(asRole.ConnectionString);

        // Two segments, each of which would try the wire reader if the first refusal were not remembered.
        ChainVerification result = await new ChainVerifier(legacy, new VerifierLimits { ParallelReadersMax = 2, SegmentRecordsMin = 1_000 }).VerifyStreamAsync(TestRecords.Provider, "cluster-a");
        Assert.True(result.Intact, result.Evidence);
        Assert.Equal(2_500UL, result.RecordsChecked);
        Assert.Equal(head, result.ComputedHead);

        var required = new ChainVerifier(legacy, new VerifierLimits { Transport = CopyTransport.Wire });
        var refused = await Assert.ThrowsAsync<WireUnsupportedException>(() => required.VerifyStreamAsync(TestRecords.Provider, "cluster-a"));
        Assert.Contains("standard_conforming_strings", refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Host=db1,db2;Username=u;Database=d", "several")]
    [InlineData("Host=db.example;Username=u;Database=d;SSL Mode=Require", "SSL Mode=Require")]
    [InlineData("Host=db.example;Username=u;Database=d", "SSL Mode=Prefer")]
    [InlineData("Host=/tmp/sockets;Database=d", "no user")]
    [InlineData("Host=/tmp/sockets;Username=u;Search Path=elsewhere", "search path")]
    [InlineData("Host=db.example;Username=u;SSL Mode=Allow", "SSL Mode=Allow")]
    [InlineData("Host=db.example:6432;Username=u;SSL Mode=Disable", "its own port")]
    public void A_connection_string_it_cannot_serve_is_named_with_the_reason(string connectionString, string reason)
    {
        Assert.Null(WireEndpoint.TryFrom(connectionString, out string? whyNot));
        Assert.Contains(reason, whyNot, StringComparison.Ordinal);
    }

    [Fact]
    public void A_socket_or_plain_tcp_connection_string_is_served()
    {
        WireEndpoint socket = WireEndpoint.TryFrom("Host=/tmp/sockets;Port=5433;Username=u;Database=d", out _)!;
        WireEndpoint tcp = WireEndpoint.TryFrom("Host=127.0.0.1;Username=u;Password=p;SSL Mode=Disable", out _)!;

        Assert.Equal(("/tmp/sockets", 5433, "u", "d", true), (socket.Host, socket.Port, socket.Username, socket.Database, socket.IsUnixSocket));
        Assert.Equal(("127.0.0.1", 5432, "p", "u", false), (tcp.Host, tcp.Port, tcp.Password, tcp.Database, tcp.IsUnixSocket));
        Assert.DoesNotContain("=p", tcp.ToString().Replace(" ", "", StringComparison.Ordinal), StringComparison.Ordinal);
        Assert.Contains("Password = set", tcp.ToString(), StringComparison.Ordinal);
    }

    private static async Task<byte[]> ReadAllAsync(Stream stream)
    {
        using var all = new MemoryStream();
        await stream.CopyToAsync(all, 64 * 1024);
        return all.ToArray();
    }

    /// <summary>
    /// Puts a line for the role in front of the cluster's pg_hba.conf (the fixture's cluster
    /// trusts every local login otherwise) and waits until a wrong password is refused, which
    /// shows the server has loaded it.
    /// </summary>
    private async Task RequireMethodAsync(string connectionString, string role, string method)
    {
        string file = Path.Combine(postgres.Server.DataDirectory, "pg_hba.conf");
        string rules = await File.ReadAllTextAsync(file);
        string line = $"local all {role} {method}\n";
        if (!rules.Contains(line, StringComparison.Ordinal))
        {
            await File.WriteAllTextAsync(file, line + rules);
        }

        await using (var connection = new NpgsqlConnection(connectionString))
        {
            await connection.OpenAsync();
            await connection.ExecuteAsync("SELECT pg_reload_conf()");
        }

        var probe = new NpgsqlConnectionStringBuilder(connectionString) { Username = role, Password = "not-the-password", Pooling = false };
        for (int attempt = 0; attempt < 100; attempt++)
        {
            try
            {
                await using var connection = new NpgsqlConnection(probe.ConnectionString);
                await connection.OpenAsync();
            }
            catch (PostgresException e) when (e.SqlState == "28P01")
            {
                return;
            }

            await Task.Delay(50);
        }

        throw new InvalidOperationException($"The server still lets {role} in without its password after pg_hba.conf asked for {method}.");
    }
}
