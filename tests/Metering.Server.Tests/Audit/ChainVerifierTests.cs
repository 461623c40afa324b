using System.Security.Cryptography;
using Metering.Engine.Audit;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Audit;

/// <summary>The verifier against rows written by ingest and then changed by direct SQL.</summary>
[Collection(PostgresCollection.Name)]
public sealed class ChainVerifierTests(PostgresFixture postgres)
{
    private const string Stream = "cluster-a";
    private const string Where = "provider_id = '" + TestRecords.Provider + "' AND stream_id = 'cluster-a'";

    [Fact]
    public async Task An_untouched_stream_verifies_to_its_acknowledged_head()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        byte[] head = await scene.StreamAsync(Stream, 1, 300);

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.True(result.Intact, result.Evidence);
        Assert.Equal(300UL, result.RecordsChecked);
        Assert.Equal(head, result.ComputedHead);
        Assert.True(result.CanonicalBytes > 300 * 100);
    }

    [Fact]
    public async Task A_changed_field_is_caught_at_its_record_with_bytes_that_rehash_to_the_reported_hash()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 300);
        await scene.TamperAsync($"UPDATE usage_records SET device_count = 4 WHERE {Where} AND sequence = 123");

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal(123UL, result.FirstBrokenSequence);
        Assert.Equal(122UL, result.RecordsChecked);
        ChainBreak evidence = Assert.IsType<ChainBreak>(result.Break);
        Assert.Equal(ChainBreakKind.HashMismatch, evidence.Kind);
        Assert.NotEqual(evidence.StoredHashHex, evidence.ComputedHashHex);
        // The evidence is checkable by hand: SHA-256(previous || canonical) is the computed hash,
        // and the canonical bytes carry the changed device count (u32 after the model string).
        byte[] canonical = Convert.FromHexString(evidence.CanonicalHex);
        Assert.Equal(evidence.ComputedHashHex, Convert.ToHexStringLower(SHA256.HashData([.. Convert.FromHexString(evidence.PreviousHashHex), .. canonical])));
        Assert.Contains("000000040000000100000001", evidence.CanonicalHex, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_deleted_record_is_reported_missing()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 50);
        await scene.TamperAsync($"DELETE FROM usage_records WHERE {Where} AND sequence IN (20, 21)");

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal(20UL, result.FirstBrokenSequence);
        Assert.Equal(ChainBreakKind.RecordMissing, result.Break!.Kind);
        Assert.Contains("records 20 to 21 are missing", result.Break.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_deleted_last_record_is_reported_missing_below_the_committed_mark()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 50);
        await scene.TamperAsync($"DELETE FROM usage_records WHERE {Where} AND sequence = 50");

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal((50UL, ChainBreakKind.RecordMissing), (result.FirstBrokenSequence!.Value, result.Break!.Kind));
    }

    [Fact]
    public async Task An_inserted_copy_of_a_sequence_is_reported_duplicated()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 50);
        // The primary key includes start_at, so a second row for sequence 30 fits if it starts later.
        await scene.TamperAsync($"""
            INSERT INTO usage_records SELECT provider_id, stream_id, sequence, job_id || '-x', holder_code, device_model, device_count, share_numerator,
                share_denominator, start_at + interval '1 second', end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash, committed_at
            FROM usage_records WHERE {Where} AND sequence = 30
            """);

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal(30UL, result.FirstBrokenSequence);
        Assert.Contains(result.Break!.Kind, new[] { ChainBreakKind.RecordDuplicated, ChainBreakKind.HashMismatch });
    }

    [Fact]
    public async Task A_sub_millisecond_time_cannot_hide_in_the_millisecond_encoding()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 50);
        await scene.TamperAsync($"UPDATE usage_records SET end_at = end_at + interval '400 microseconds' WHERE {Where} AND sequence = 7");

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal((7UL, ChainBreakKind.RecordNotEncodable), (result.FirstBrokenSequence!.Value, result.Break!.Kind));
        Assert.Contains("sub-millisecond", result.Break.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_rewritten_device_uuid_is_caught_and_its_evidence_carries_the_forged_uuid()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 50);
        await scene.TamperAsync($"UPDATE usage_records SET device_uuids = ARRAY['GPU-forged-1', 'GPU-forged-2'] WHERE {Where} AND sequence = 11");

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal((11UL, ChainBreakKind.HashMismatch), (result.FirstBrokenSequence!.Value, result.Break!.Kind));
        // The list as the encoding holds it: a u16 count of 2, then each UUID behind its u16 length.
        string forged = "0002" + "000c" + Convert.ToHexStringLower("GPU-forged-1"u8) + "000c" + Convert.ToHexStringLower("GPU-forged-2"u8);
        Assert.Contains(forged, result.Break.CanonicalHex, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("ARRAY['GPU-a', NULL]::text[]", "element 2 is NULL")]
    [InlineData("ARRAY[['GPU-a', 'GPU-b'], ['GPU-c', 'GPU-d']]", "2 dimensions")]
    public async Task Device_uuids_that_are_not_a_list_of_strings_cannot_be_encoded(string uuids, string reason)
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 50);
        await scene.TamperAsync($"UPDATE usage_records SET device_uuids = {uuids} WHERE {Where} AND sequence = 9");

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal((9UL, ChainBreakKind.RecordNotEncodable), (result.FirstBrokenSequence!.Value, result.Break!.Kind));
        Assert.Contains(reason, result.Break.Detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("job_id = repeat('j', 70000)", "job_id is 70000 bytes")]
    [InlineData("device_uuids = array_fill(repeat('u', 60000), ARRAY[20])", "would exceed")]
    public async Task A_row_too_long_for_the_encoding_is_reported_at_its_record_rather_than_failing_the_read(string change, string reason)
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 50);
        await scene.TamperAsync($"UPDATE usage_records SET {change} WHERE {Where} AND sequence = 40");

        ChainVerification result = await new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal((40UL, ChainBreakKind.RecordNotEncodable), (result.FirstBrokenSequence!.Value, result.Break!.Kind));
        Assert.Equal(39UL, result.RecordsChecked);
        Assert.Contains(reason, result.Break.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_row_past_the_committed_mark_and_a_rewritten_head_are_both_caught()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 20);
        await scene.TamperAsync($"""
            INSERT INTO usage_records SELECT provider_id, stream_id, 21, job_id, holder_code, device_model, device_count, share_numerator,
                share_denominator, start_at, end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash, committed_at
            FROM usage_records WHERE {Where} AND sequence = 20
            """);
        var verifier = new ChainVerifier(scene.DataSource);

        ChainVerification beyond = await verifier.VerifyStreamAsync(TestRecords.Provider, Stream);
        Assert.Equal((21UL, ChainBreakKind.RecordBeyondHead), (beyond.FirstBrokenSequence!.Value, beyond.Break!.Kind));

        await scene.TamperAsync($"DELETE FROM usage_records WHERE {Where} AND sequence = 21");
        // A superuser can switch off the forward-only guard of the head; the verifier still notices.
        await scene.ExecuteAsync($"""
            ALTER TABLE ingest_streams DISABLE TRIGGER ingest_streams_forward_only;
            UPDATE ingest_streams SET chain_head = sha256('forged') WHERE {Where};
            ALTER TABLE ingest_streams ENABLE TRIGGER ingest_streams_forward_only;
            """);
        ChainVerification head = await verifier.VerifyStreamAsync(TestRecords.Provider, Stream);
        Assert.Equal((20UL, ChainBreakKind.HeadMismatch), (head.FirstBrokenSequence!.Value, head.Break!.Kind));
    }

    [Fact]
    public async Task A_range_starts_from_the_stored_hash_before_it_and_sees_only_its_own_records()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 100);
        await scene.TamperAsync($"UPDATE usage_records SET job_id = 'forged' WHERE {Where} AND sequence = 10");
        var verifier = new ChainVerifier(scene.DataSource);

        ChainVerification after = await verifier.VerifyStreamAsync(TestRecords.Provider, Stream, new VerificationRange(11, 60), null);
        ChainVerification covering = await verifier.VerifyStreamAsync(TestRecords.Provider, Stream, new VerificationRange(5, 60), null);

        Assert.True(after.Intact, after.Evidence);
        Assert.Equal((11UL, 60UL, 50UL), (after.FromSequence, after.ToSequence, after.RecordsChecked));
        Assert.Equal(10UL, covering.FirstBrokenSequence);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => verifier.VerifyStreamAsync(TestRecords.Provider, Stream, new VerificationRange(1, 101), null));
    }

    [Theory]
    [InlineData(1_700UL)]
    [InlineData(2_001UL)]
    [InlineData(4_999UL)]
    public async Task Segments_verified_side_by_side_find_the_same_first_break_as_one_pass(ulong tampered)
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        byte[] head = await scene.StreamAsync(Stream, AuditScene.Records(1, 5_000, AuditScene.EarlyStartMs));
        var segmented = new ChainVerifier(scene.DataSource, new VerifierLimits { ParallelReadersMax = 5, SegmentRecordsMin = 1_000 });

        ChainVerification intact = await segmented.VerifyStreamAsync(TestRecords.Provider, Stream);
        Assert.True(intact.Intact, intact.Evidence);
        Assert.Equal(5_000UL, intact.RecordsChecked);
        Assert.Equal(head, intact.ComputedHead);

        // Record 2,001 is the first of the third segment: it is checked against the stored hash
        // of 2,000, which the second segment checks in turn.
        await scene.TamperAsync($"UPDATE usage_records SET energy_mwh = 1 WHERE {Where} AND sequence = @tampered", new { tampered = (long)tampered });
        ChainVerification broken = await segmented.VerifyStreamAsync(TestRecords.Provider, Stream);
        ChainVerification onePass = await new ChainVerifier(scene.DataSource, new VerifierLimits { ParallelReadersMax = 1 }).VerifyStreamAsync(TestRecords.Provider, Stream);

        Assert.Equal(tampered, broken.FirstBrokenSequence);
        Assert.Equal(tampered - 1, broken.RecordsChecked);
        Assert.Equal(onePass.Break, broken.Break);
    }

    [Theory]
    [InlineData(2_000UL)]
    [InlineData(2_001UL)]
    public async Task A_rewrite_at_a_segment_boundary_whose_own_hash_was_recomputed_is_caught_at_the_next_record(ulong rewritten)
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, AuditScene.Records(1, 5_000, AuditScene.EarlyStartMs));
        var segmented = new ChainVerifier(scene.DataSource, new VerifierLimits { ParallelReadersMax = 5, SegmentRecordsMin = 1_000 });
        var onePass = new ChainVerifier(scene.DataSource, new VerifierLimits { ParallelReadersMax = 1 });

        // The cheater changes a record next to a segment boundary (2,000 is the last record of
        // the second segment, whose stored hash the third segment starts from; 2,001 is the first
        // record of the third) and stores the hash that its previous record and new content give,
        // as the verifier itself computes it. The record then verifies on its own, and the
        // segment after 2,000 starts from the cheater's hash.
        await scene.TamperAsync($"UPDATE usage_records SET job_id = 'forged' WHERE {Where} AND sequence = @rewritten", new { rewritten = (long)rewritten });
        ChainBreak forged = (await onePass.VerifyStreamAsync(TestRecords.Provider, Stream)).Break!;
        Assert.Equal((rewritten, ChainBreakKind.HashMismatch), (forged.Sequence, forged.Kind));
        await scene.TamperAsync($"UPDATE usage_records SET chain_hash = @hash WHERE {Where} AND sequence = @rewritten",
            new { hash = Convert.FromHexString(forged.ComputedHashHex), rewritten = (long)rewritten });

        ChainVerification broken = await segmented.VerifyStreamAsync(TestRecords.Provider, Stream);
        ChainVerification reference = await onePass.VerifyStreamAsync(TestRecords.Provider, Stream);

        // The next record was chained to the hash the rewrite replaced.
        Assert.Equal(rewritten + 1, broken.FirstBrokenSequence);
        Assert.Equal(ChainBreakKind.HashMismatch, broken.Break!.Kind);
        Assert.Equal(forged.ComputedHashHex, broken.Break.PreviousHashHex);
        Assert.Equal(reference.Break, broken.Break);
        Assert.Equal(rewritten, broken.RecordsChecked);
    }

    [Fact]
    public async Task A_verification_cancelled_while_it_reads_stops_and_leaves_the_pool_usable()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, AuditScene.Records(1, 5_000, AuditScene.EarlyStartMs));
        var verifier = new ChainVerifier(scene.DataSource);
        using var cancel = new CancellationTokenSource();
        var sink = new CancellingSink(cancel, afterRecords: 100);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => verifier.VerifyStreamAsync(TestRecords.Provider, Stream, VerificationRange.Whole, sink, cancel.Token));

        // No record past the one that cancelled was verified, and the next verification (on the
        // pool's connections) reads every record.
        Assert.Equal(100, sink.Records);
        ChainVerification after = await verifier.VerifyStreamAsync(TestRecords.Provider, Stream);
        Assert.True(after.Intact, after.Evidence);
        Assert.Equal(5_000UL, after.RecordsChecked);
    }

    /// <summary>Cancels the verification from inside it, once it has seen some records.</summary>
    private sealed class CancellingSink(CancellationTokenSource cancel, int afterRecords) : ICanonicalSink
    {
        public int Records { get; private set; }

        public void Write(ReadOnlySpan<byte> canonical)
        {
            if (++Records == afterRecords)
            {
                cancel.Cancel();
            }
        }
    }

    [Fact]
    public async Task A_provider_is_verified_stream_by_stream_and_only_the_tampered_stream_breaks()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 40);
        await scene.StreamAsync("cluster-b", 1, 40);
        await scene.StreamAsync("cluster-c", 1, 40);
        await scene.StreamAsync("theirs", 1, 40, TestServer.OtherProviderKey);
        await scene.TamperAsync($"UPDATE usage_records SET site = 'elsewhere' WHERE provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-b' AND sequence = 33");

        IReadOnlyList<ChainVerification> results = await new ChainVerifier(scene.DataSource).VerifyProviderAsync(TestRecords.Provider, VerificationRange.Whole);

        // The template's proof stream is one of the provider's streams too.
        Assert.Equal(["cluster-a", "cluster-b", "cluster-c", Admissions.ProofStream], results.Select(r => r.StreamId).Order(StringComparer.Ordinal));
        Assert.Equal([("cluster-b", 33UL)], results.Where(r => !r.Intact).Select(r => (r.StreamId, r.FirstBrokenSequence!.Value)));
    }

    [Fact]
    public async Task Rows_under_a_stream_that_ingest_never_opened_are_reported()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, 1, 5);
        await scene.TamperAsync($"""
            INSERT INTO usage_records SELECT provider_id, 'ghost', sequence, job_id, holder_code, device_model, device_count, share_numerator,
                share_denominator, start_at, end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash, committed_at
            FROM usage_records WHERE {Where}
            """);
        var verifier = new ChainVerifier(scene.DataSource);

        IReadOnlyList<ChainVerification> all = await verifier.VerifyProviderAsync(TestRecords.Provider, VerificationRange.Whole);
        ChainVerification ghost = await verifier.VerifyStreamAsync(TestRecords.Provider, "ghost");

        Assert.Equal([("ghost", ChainBreakKind.RecordBeyondHead)], all.Where(r => !r.Intact).Select(r => (r.StreamId, r.Break!.Kind)));
        Assert.Equal(ChainBreakKind.RecordBeyondHead, ghost.Break?.Kind);
        Assert.Contains("never opened", ghost.Break!.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_stream_never_opened_and_without_rows_is_not_found_rather_than_intact()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);

        RecordNotFoundException missing = await Assert.ThrowsAsync<RecordNotFoundException>(() =>
            new ChainVerifier(scene.DataSource).VerifyStreamAsync(TestRecords.Provider, "never-opened"));

        Assert.Contains("never opened", missing.Message, StringComparison.Ordinal);
    }
}
