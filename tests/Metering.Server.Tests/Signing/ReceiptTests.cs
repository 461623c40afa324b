using System.Diagnostics;
using System.Text.Json;
using Dapper;
using Grpc.Core;
using Metering.Client.Receipts;
using Metering.Client.Streaming;
using Metering.Engine.Signing;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;
using Receipt = Metering.Engine.Signing.Receipt;

namespace Metering.Server.Tests.Signing;

/// <summary>
/// Receipts as a provider gets and keeps them, and as `metering audit check-receipts` holds them
/// against the database: through a real server, a real PostgreSQL, the real CLI and OpenSSL.
/// </summary>
[Collection(PostgresCollection.Name)]
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ReceiptTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Every_acknowledgement_carries_a_receipt_of_the_committed_head_that_openssl_verifies()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        Assert.Null(call.Opened.Receipt);

        long before = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        BatchAck first = await call.SendAsync(TestRecords.Range(1, 5));
        BatchAck second = await call.SendAsync(TestRecords.Range(6, 9));
        BatchAck replay = await call.SendAsync(TestRecords.Range(8, 9));

        foreach (BatchAck ack in new[] { first, second, replay })
        {
            Receipt receipt = Receipt.Decode(ack.Receipt.Signed.Span);
            Assert.Equal((TestServer.SigningKey.KeyId, TestRecords.Provider, "cluster-a", ack.CommittedSequence),
                (receipt.KeyId, receipt.ProviderId, receipt.StreamId, receipt.Sequence));
            Assert.Equal(ack.ChainHead.ToByteArray(), receipt.ChainHead);
            Assert.Equal(TestServer.SigningKey.KeyId, ack.Receipt.KeyId);
            Assert.InRange(receipt.CommittedUnixMs, before, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        }

        Assert.Equal(9UL, Receipt.Decode(replay.Receipt.Signed.Span).Sequence);
        byte[] stored = await server.ScalarAsync<byte[]>("SELECT chain_hash FROM usage_records WHERE stream_id = 'cluster-a' AND sequence = 9");
        Assert.Equal(stored, Receipt.Decode(second.Receipt.Signed.Span).ChainHead);

        // The outsider's check: the bytes and signature as they came off the wire, and openssl.
        string folder = Directory.CreateTempSubdirectory("receipt-").FullName;
        string publicKey = Path.Combine(folder, "server.pub.pem");
        await File.WriteAllTextAsync(publicKey, TestServer.SigningKey.PublicKey.Pem);
        await File.WriteAllBytesAsync(Path.Combine(folder, "receipt.bin"), second.Receipt.Signed.ToByteArray());
        await File.WriteAllBytesAsync(Path.Combine(folder, "receipt.sig"), second.Receipt.Signature.ToByteArray());
        var (verified, output) = await OpensslVerifyAsync(publicKey, Path.Combine(folder, "receipt.sig"), Path.Combine(folder, "receipt.bin"));
        Assert.True(verified == 0, output);
        Assert.Contains("Verified OK", output, StringComparison.Ordinal);

        // The same signature over the first receipt's bytes is refused by openssl too.
        await File.WriteAllBytesAsync(Path.Combine(folder, "receipt.bin"), first.Receipt.Signed.ToByteArray());
        Assert.NotEqual(0, (await OpensslVerifyAsync(publicKey, Path.Combine(folder, "receipt.sig"), Path.Combine(folder, "receipt.bin"))).ExitCode);
    }

    [Fact]
    public async Task A_reconnecting_client_gets_a_receipt_for_the_point_it_resumes_from()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 4));
        }

        await using IngestCall again = await IngestCall.OpenAsync(server.Client(), "cluster-a");

        Receipt receipt = Receipt.Decode(again.Opened.Receipt.Signed.Span);
        Assert.Equal(4UL, receipt.Sequence);
        Assert.Equal(again.Opened.ChainHead.ToByteArray(), receipt.ChainHead);
        Assert.True(TestServer.SigningKey.PublicKey.Verify(again.Opened.Receipt.Signed.Span, again.Opened.Receipt.Signature.Span));
    }

    [Fact]
    public async Task Get_chain_hashes_answers_stored_and_missing_sequences_and_keeps_a_provider_to_its_own_streams()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 3));
        }

        var audit = new AuditService.AuditServiceClient(server.Channel);
        var request = new GetChainHashesRequest { CreditCode = TestRecords.Provider, StreamId = "cluster-a", Sequences = { 3, 2, 3, 7 } };

        GetChainHashesResponse answer = await audit.GetChainHashesAsync(request, TestServer.Bearer(TestServer.AuditorKey));

        Assert.Equal([2UL, 3UL, 7UL], answer.Hashes.Select(h => h.Sequence));
        Assert.Equal([true, true, false], answer.Hashes.Select(h => h.Stored));
        Assert.Equal(await server.ScalarAsync<byte[]>("SELECT chain_hash FROM usage_records WHERE stream_id = 'cluster-a' AND sequence = 2"), answer.Hashes[0].ChainHash.ToByteArray());
        Assert.Equal((3UL, answer.Hashes[1].ChainHash), (answer.CommittedSequence, answer.ChainHead));

        var other = new GetChainHashesRequest { CreditCode = TestRecords.OtherProvider, StreamId = "cluster-a", Sequences = { 1 } };
        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => audit.GetChainHashesAsync(other, TestServer.Bearer()).ResponseAsync);
        Assert.Equal((StatusCode.PermissionDenied, "OTHER_PROVIDER"), (refused.StatusCode, IngestCall.Reason(refused)));
    }

    [Fact]
    public async Task Get_chain_hashes_refuses_an_oversize_or_empty_request_before_it_is_logged()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var audit = new AuditService.AuditServiceClient(server.Channel);
        long logged = await server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log");
        var oversize = new GetChainHashesRequest { CreditCode = TestRecords.Provider, StreamId = "cluster-a" };
        oversize.Sequences.Add(Enumerable.Range(1, 1_001).Select(i => (ulong)i));

        RpcException tooMany = await Assert.ThrowsAsync<RpcException>(() => audit.GetChainHashesAsync(oversize, TestServer.Bearer(TestServer.AuditorKey)).ResponseAsync);
        Assert.Equal((StatusCode.ResourceExhausted, "AUDIT_LIMIT_EXCEEDED"), (tooMany.StatusCode, IngestCall.Reason(tooMany)));
        Assert.Equal(logged, await server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log"));

        var zero = new GetChainHashesRequest { CreditCode = TestRecords.Provider, StreamId = "cluster-a", Sequences = { 0 } };
        RpcException invalid = await Assert.ThrowsAsync<RpcException>(() => audit.GetChainHashesAsync(zero, TestServer.Bearer(TestServer.AuditorKey)).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, "AUDIT_ARGUMENT_INVALID"), (invalid.StatusCode, IngestCall.Reason(invalid)));
    }

    [Fact]
    public async Task Get_signing_key_gives_every_role_the_key_that_checks_the_receipts()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var audit = new AuditService.AuditServiceClient(server.Channel);
        foreach (string key in new[] { TestServer.ProviderKey, TestServer.OperatorKey, TestServer.AuditorKey, TestServer.SettlementKey })
        {
            SigningKey published = await audit.GetSigningKeyAsync(new GetSigningKeyRequest(), TestServer.Bearer(key));

            Assert.Equal(TestServer.SigningKey.KeyId, published.KeyId);
            Assert.Equal(TestServer.SigningKey.KeyId, ServerPublicKey.FromPem(published.PublicKeyPem).KeyId);
        }
    }

    [Fact]
    public async Task Check_receipts_passes_on_the_agents_receipts_with_the_published_key_or_the_servers()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string receipts = await StreamWithReceiptsAsync(server, "cluster-a", 600);
        Assert.Equal(6, File.ReadAllLines(receipts).Length);

        var (pinned, pinnedOutput) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, await PublicKeyFileAsync(TestServer.SigningKey.PublicKey));
        var (fetched, fetchedOutput) = await CheckReceiptsAsync(server, receipts, TestServer.AuditorKey);

        Assert.True(pinned == 0, pinnedOutput);
        Assert.Contains($"6 receipts hold", pinnedOutput, StringComparison.Ordinal);
        Assert.True(fetched == 0, fetchedOutput);
        Assert.Contains($"the server's current key {TestServer.SigningKey.KeyId}", fetchedOutput, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Check_receipts_names_a_receipt_whose_signed_bytes_were_edited()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string receipts = await StreamWithReceiptsAsync(server, "cluster-a", 400);
        // The provider "improves" its third receipt: one byte of the chain head, readable fields removed.
        string[] lines = File.ReadAllLines(receipts);
        using (JsonDocument third = JsonDocument.Parse(lines[2]))
        {
            byte[] signed = third.RootElement.GetProperty("signed").GetBytesFromBase64();
            signed[^20] ^= 1;
            lines[2] = JsonSerializer.Serialize(new { signed, signature = third.RootElement.GetProperty("signature").GetBytesFromBase64() });
        }

        await File.WriteAllLinesAsync(receipts, lines);

        var (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, await PublicKeyFileAsync(TestServer.SigningKey.PublicKey));

        Assert.Equal(3, exit);
        Assert.Contains($"FAILED: receipt at line 3 ({TestRecords.Provider}/cluster-a #300): bad signature", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Check_receipts_names_a_receipt_signed_by_another_key()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string receipts = await StreamWithReceiptsAsync(server, "cluster-a", 200);
        byte[] head = await server.ScalarAsync<byte[]>("SELECT chain_hash FROM usage_records WHERE stream_id = 'cluster-a' AND sequence = 200");
        using ServerSigningKey forger = ServerSigningKey.CreateNew();
        // A true statement (that head is stored at 200) signed by a key that is not the server's.
        await AppendAsync(receipts, new ReceiptSigner(forger, TimeProvider.System).Sign(TestRecords.Provider, "cluster-a", 200, head));
        string publicKey = await PublicKeyFileAsync(TestServer.SigningKey.PublicKey);

        var (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, publicKey);

        Assert.Equal(3, exit);
        Assert.Contains($"FAILED: receipt at line 3 ({TestRecords.Provider}/cluster-a #200): unknown key id {forger.KeyId}", output, StringComparison.Ordinal);

        // The same forgery under the server's key id fails its signature instead.
        string[] lines = File.ReadAllLines(receipts);
        byte[] claimed = new Receipt(TestServer.SigningKey.KeyId, TestRecords.Provider, "cluster-a", 200, head, 1).Encode();
        lines[2] = Line(new SignedReceipt(claimed, forger.Sign(claimed), TestServer.SigningKey.KeyId));
        await File.WriteAllLinesAsync(receipts, lines);

        (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, publicKey);

        Assert.Equal(3, exit);
        Assert.Contains("line 3", output, StringComparison.Ordinal);
        Assert.Contains("bad signature", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Receipts_catch_a_superuser_rewrite_that_audit_verify_passes()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        const ulong total = 1_000;
        string receipts = await StreamWithReceiptsAsync(server, "cluster-a", total);
        byte[] honestHeadAt500 = await server.ScalarAsync<byte[]>("SELECT chain_hash FROM usage_records WHERE stream_id = 'cluster-a' AND sequence = 500");

        // The insider, as the database superuser with triggers off: doubles record 450's devices
        // and recomputes every chain hash after it, and the stream's head, with the engine's own
        // canonical encoding, so that the database is consistent again.
        await RewriteAsync(server, "cluster-a", rewritten: 450, total);

        var (verifyExit, verifyOutput) = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "audit", "verify", "--provider", TestRecords.Provider, "--stream", "cluster-a");
        Assert.True(verifyExit == 0, verifyOutput);
        Assert.Contains("intact", verifyOutput, StringComparison.Ordinal);

        var (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, await PublicKeyFileAsync(TestServer.SigningKey.PublicKey));

        byte[] rewrittenHeadAt500 = await server.ScalarAsync<byte[]>("SELECT chain_hash FROM usage_records WHERE stream_id = 'cluster-a' AND sequence = 500");
        Assert.Equal(3, exit);
        Assert.Contains(
            $"FAILED: receipt at line 5 ({TestRecords.Provider}/cluster-a #500): head differs at sequence 500: receipt says {Convert.ToHexStringLower(honestHeadAt500)}, database holds {Convert.ToHexStringLower(rewrittenHeadAt500)}",
            output, StringComparison.Ordinal);
        Assert.Contains("6 of 10 receipts fail", output, StringComparison.Ordinal);

        // The server signs what the database holds when it answers, so the agent's next resume
        // gets a genuine receipt for the rewritten head; beside the earlier one for the same
        // sequence it proves the rewrite by itself.
        await StreamWithReceiptsAsync(server, "cluster-a", total, receipts);
        Assert.Equal(11, File.ReadAllLines(receipts).Length);

        (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, await PublicKeyFileAsync(TestServer.SigningKey.PublicKey));

        Assert.Equal(3, exit);
        Assert.Contains("FAILED: receipt at line 5", output, StringComparison.Ordinal);
        Assert.Contains("7 of 11 receipts fail", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Check_receipts_reports_two_genuine_receipts_that_disagree_at_one_sequence()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string receipts = await StreamWithReceiptsAsync(server, "cluster-a", 100);
        var signer = new ReceiptSigner(TestServer.SigningKey, TimeProvider.System);
        await AppendAsync(receipts, signer.Sign(TestRecords.Provider, "cluster-a", 100, new byte[32]));

        var (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, await PublicKeyFileAsync(TestServer.SigningKey.PublicKey));

        Assert.Equal(3, exit);
        Assert.Contains($"FAILED: receipt at line 2 ({TestRecords.Provider}/cluster-a #100): receipts disagree at sequence 100: line 1 says", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Check_receipts_names_a_receipt_whose_sequence_is_no_longer_stored()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string receipts = await StreamWithReceiptsAsync(server, "cluster-a", 300);
        await using (var connection = new NpgsqlConnection(server.ConnectionString))
        {
            await connection.OpenAsync();
            await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync();
            await connection.ExecuteAsync("SET LOCAL session_replication_role = replica", transaction: transaction);
            await connection.ExecuteAsync("DELETE FROM usage_records WHERE stream_id = 'cluster-a' AND sequence > 250", transaction: transaction);
            await transaction.CommitAsync();
        }

        var (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, await PublicKeyFileAsync(TestServer.SigningKey.PublicKey));

        Assert.Equal(3, exit);
        Assert.Contains($"FAILED: receipt at line 3 ({TestRecords.Provider}/cluster-a #300): sequence 300 not stored", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Check_receipts_refuses_a_provider_checking_another_providers_receipts()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string receipts = await StreamWithReceiptsAsync(server, "cluster-a", 100);

        var (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.OtherProviderKey, await PublicKeyFileAsync(TestServer.SigningKey.PublicKey));

        Assert.Equal(4, exit);
        Assert.Contains("refused: PermissionDenied OTHER_PROVIDER", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ingest_file_keeps_the_uploads_receipt_and_check_receipts_accepts_it()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string receipts = Path.Combine(Directory.CreateTempSubdirectory("receipts-").FullName, "upload-receipts.jsonl");
        string samples = Path.Combine(TestRecords.RepositoryRoot(), "samples", "RawLogs");

        var (uploadExit, uploadOutput) = await CliProcess.RunAsync(
            "ingest-file", Path.Combine(samples, "sacct-2026-11-20.txt"), "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.ProviderKey,
            "--stream", "slurm-nanshan", "--format", "sacct", "--mapping", Path.Combine(samples, "mapping.json"), "--receipts", receipts);
        Assert.True(uploadExit == 7, uploadOutput);
        Receipt receipt = Receipt.Decode(JsonDocument.Parse(File.ReadAllLines(receipts).Single()).RootElement.GetProperty("signed").GetBytesFromBase64());
        Assert.Equal(("slurm-nanshan", 5UL), (receipt.StreamId, receipt.Sequence));

        var (exit, output) = await CheckReceiptsAsync(server, receipts, TestServer.ProviderKey, await PublicKeyFileAsync(TestServer.SigningKey.PublicKey));

        Assert.True(exit == 0, output);
    }

    private static async Task<string> StreamWithReceiptsAsync(TestServer server, string streamId, ulong total, string? path = null)
    {
        path ??= Path.Combine(Directory.CreateTempSubdirectory("receipts-").FullName, "receipts.jsonl");
        using (var receipts = new ReceiptsFile(path))
        {
            var streamer = new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions { BatchRecords = 100, WindowBatches = 2, Receipts = receipts });
            StreamResult result = await streamer.RunAsync(streamId, TestRecords.Valid, total, CancellationToken.None);
            Assert.Equal(total, result.CommittedSequence);
        }

        return path;
    }

    /// <summary>The insider's rewrite: one record changed, every later hash and the head recomputed, all consistent.</summary>
    private static async Task RewriteAsync(TestServer server, string streamId, ulong rewritten, ulong total)
    {
        await InsiderRewrite.RewriteChainAsync(server.ConnectionString, TestRecords.Provider, streamId, rewritten, total, TestRecords.Valid, record => record.DeviceCount *= 2);
        Assert.Equal(16, await server.ScalarAsync<int>("SELECT device_count FROM usage_records WHERE stream_id = @stream AND sequence = @sequence", new { stream = streamId, sequence = (long)rewritten }));
    }

    private static Task<(int ExitCode, string Output)> CheckReceiptsAsync(TestServer server, string receipts, string apiKey, string? publicKey = null) =>
        CliProcess.RunAsync([
            "audit", "check-receipts", receipts, "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", apiKey,
            .. publicKey is null ? Array.Empty<string>() : ["--public-key", publicKey],
        ]);

    private static async Task<string> PublicKeyFileAsync(ServerPublicKey key)
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("server-key-").FullName, "server.pub.pem");
        await File.WriteAllTextAsync(path, key.Pem);
        return path;
    }

    private static Task AppendAsync(string receipts, SignedReceipt receipt) => File.AppendAllLinesAsync(receipts, [Line(receipt)]);

    private static string Line(SignedReceipt receipt) => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["key_id"] = receipt.KeyId,
        ["signed"] = receipt.Signed,
        ["signature"] = receipt.Signature,
    });

    private static async Task<(int ExitCode, string Output)> OpensslVerifyAsync(string publicKey, string signature, string message)
    {
        var start = new ProcessStartInfo("openssl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in new[] { "dgst", "-sha256", "-verify", publicKey, "-signature", signature, message })
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        return (process.ExitCode, await output + await error);
    }
}
