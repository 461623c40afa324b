using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Storage;
using Metering.Fixtures;

namespace Metering.Server.Fixtures;

/// <summary>What a stream holds in the database after a test has streamed into it, however many servers took part.</summary>
public static class StoredStream
{
    /// <summary>
    /// Every sequence from 1 to <paramref name="total"/> is stored once and no other, and the chain
    /// verifies to the head the client was acknowledged.
    /// </summary>
    public static async Task AssertExactlyOnceAsync(string connectionString, string streamId, ulong total, byte[] acknowledgedHead)
    {
        await using var dataSource = Database.CreateDataSource(connectionString);
        await using (var connection = await dataSource.OpenConnectionAsync())
        {
            var counts = await connection.QuerySingleAsync<(long Rows, long Distinct, long Max)>(
                "SELECT count(*), count(DISTINCT sequence), max(sequence) FROM usage_records WHERE stream_id = @streamId", new { streamId });
            Assert.Equal(((long)total, (long)total, (long)total), counts);
        }

        ChainVerification verification = await new ChainVerifier(dataSource).VerifyStreamAsync(TestRecords.Provider, streamId);
        Assert.True(verification.Intact, verification.Evidence);
        Assert.Equal(acknowledgedHead, verification.ComputedHead);
    }
}
