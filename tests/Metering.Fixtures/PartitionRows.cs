namespace Metering.Fixtures;

/// <summary>
/// One usage record written straight into usage_records by the owner, for the tests of where a
/// month's rows land (its own monthly partition or the default one); the chain and content do
/// not matter there, only the start time.
/// </summary>
internal static class PartitionRows
{
    public const string Insert = """
        INSERT INTO usage_records (provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                                   start_at, end_at, site, catalog_version, usage_npfh, chain_hash)
        VALUES (@Provider, @Stream, 1, 'partition-job', 'holder', 'H100-SXM', 1, 1, 1, @StartAt, @EndAt, 'sz-test', 'test', 1, '\x00'::bytea)
        """;

    /// <summary>The parameters of <see cref="Insert"/>: a one-hour record of the stream starting at <paramref name="startAt"/>.</summary>
    public static object Row(string provider, string stream, DateTimeOffset startAt) =>
        new { Provider = provider, Stream = stream, StartAt = startAt.UtcDateTime, EndAt = startAt.AddHours(1).UtcDateTime };
}
