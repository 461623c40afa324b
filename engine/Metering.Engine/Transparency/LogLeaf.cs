using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace Metering.Engine.Transparency;

/// <summary>
/// One leaf of the transparency log: a provider's daily Merkle root as the settlement of its day
/// published it (the provider statement's merkle_root row), with the settlement hash of that run.
/// Its canonical bytes (transparency-log.md, "The leaf"):
/// <code>
/// version        1 byte    0x01
/// day            10 bytes  yyyy-MM-dd, ASCII (Asia/Shanghai day)
/// provider       1 byte length, then the credit code in UTF-8 (1 to 64 bytes)
/// leaf_count     8 bytes   unsigned big-endian: leaves of the daily tree
/// daily_root     32 bytes  the daily tree's root
/// settlement     32 bytes  the settlement hash of the run that closed the day
/// </code>
/// </summary>
public sealed record LogLeaf(DateOnly Day, string ProviderId, long LeafCount, byte[] DailyRoot, byte[] SettlementSha256)
{
    public const byte Version = 1;

    /// <summary>Longest provider id a leaf holds, in UTF-8 bytes; credit codes have 18.</summary>
    public const int ProviderBytesMax = 64;

    public byte[] Encode()
    {
        byte[] provider = Encoding.UTF8.GetBytes(ProviderId);
        if (provider.Length is 0 or > ProviderBytesMax)
        {
            throw new ArgumentException($"a log leaf's provider id has 1 to {ProviderBytesMax} UTF-8 bytes; '{ProviderId}' has {provider.Length}");
        }

        if (DailyRoot.Length != LogTree.HashBytes || SettlementSha256.Length != LogTree.HashBytes || LeafCount < 0)
        {
            throw new ArgumentException("a log leaf carries a 32-byte daily root, a 32-byte settlement hash and a leaf count that is not negative");
        }

        var bytes = new byte[1 + 10 + 1 + provider.Length + 8 + 2 * LogTree.HashBytes];
        var at = 0;
        bytes[at++] = Version;
        at += Encoding.ASCII.GetBytes(Day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture), bytes.AsSpan(at));
        bytes[at++] = (byte)provider.Length;
        provider.CopyTo(bytes, at);
        at += provider.Length;
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(at), (ulong)LeafCount);
        at += 8;
        DailyRoot.CopyTo(bytes, at);
        at += LogTree.HashBytes;
        SettlementSha256.CopyTo(bytes, at);
        return bytes;
    }

    /// <summary>SHA-256(0x00 || canonical bytes): the leaf's hash in the log's tree.</summary>
    public byte[] Hash() => LogTree.LeafHash(Encode());
}

/// <summary>
/// What a settlement run hands the log, in its own transaction: the run, when it finished, and
/// one leaf per provider statement of the day, in ordinal order of the providers.
/// </summary>
public sealed record LogAppend(long RunId, DateTimeOffset At, IReadOnlyList<LogLeaf> Leaves);
