using System.Text.RegularExpressions;
using Metering.Engine.Signing;
using Metering.Fixtures;

namespace Metering.Engine.Tests.Signing;

/// <summary>The receipt's byte form held to its contract (receipts.md), and the checks a forger meets.</summary>
public sealed class ReceiptTests
{
    private static readonly string Doc = File.ReadAllText(Path.Combine(TestRecords.RepositoryRoot(), "proto", "metering", "v1", "receipts.md"));

    private static string Value(string name) => Regex.Match(Doc, $"^{name}=([0-9a-f]+)$", RegexOptions.Multiline).Groups[1].Value;

    private static ServerPublicKey DocumentKey() => ServerPublicKey.FromPem(Doc);

    /// <summary>The example's fields as receipts.md states them in words.</summary>
    private static Receipt Example(string keyId) => new(
        keyId, "914403001922038216", "cluster-a", 2,
        Convert.FromHexString("521b9f3e84c94430fe1159deacb71122279e2e64282a5b2cf06ba10c18224ebd"), 1763600405123);

    [Fact]
    public void Encoding_and_signature_match_the_worked_example_in_the_contract()
    {
        // The document an outsider reads is the source of truth; this test keeps the code to it.
        ServerPublicKey key = DocumentKey();
        Assert.Equal("d49f800b9f0b0535", key.KeyId);
        Assert.Contains($"id `{key.KeyId}`", Doc, StringComparison.Ordinal);

        byte[] encoded = Example(key.KeyId).Encode();

        Assert.Equal(Value("RECEIPT"), Convert.ToHexStringLower(encoded));
        Assert.Equal(117, encoded.Length);
        Assert.True(key.Verify(encoded, Convert.FromHexString(Value("SIGNATURE"))));
        Receipt decoded = Receipt.Decode(encoded);
        Receipt expected = Example(key.KeyId);
        Assert.Equal((expected.KeyId, expected.ProviderId, expected.StreamId, expected.Sequence, expected.CommittedUnixMs),
            (decoded.KeyId, decoded.ProviderId, decoded.StreamId, decoded.Sequence, decoded.CommittedUnixMs));
        Assert.Equal(expected.ChainHead, decoded.ChainHead);
    }

    [Fact]
    public void Every_field_changes_the_signed_bytes()
    {
        Receipt baseline = Example("d49f800b9f0b0535");
        byte[] head = (byte[])baseline.ChainHead.Clone();
        head[31] ^= 1;
        Receipt[] variants =
        [
            baseline with { KeyId = "d49f800b9f0b0536" },
            baseline with { ProviderId = "91440300MA5F00001A" },
            baseline with { StreamId = "cluster-b" },
            baseline with { Sequence = 3 },
            baseline with { ChainHead = head },
            baseline with { CommittedUnixMs = baseline.CommittedUnixMs + 1 },
        ];

        byte[] encoded = baseline.Encode();
        foreach (Receipt variant in variants)
        {
            Assert.NotEqual(encoded, variant.Encode());
        }
    }

    [Theory]
    [InlineData("metering tree head v1")] // another message of the same key
    [InlineData("truncated")]
    [InlineData("trailing")]
    public void Bytes_that_are_not_exactly_one_receipt_are_refused(string kind)
    {
        byte[] receipt = Example("d49f800b9f0b0535").Encode();
        byte[] bytes = kind switch
        {
            "metering tree head v1" => [.. "metering tree head v1\0"u8, .. receipt[20..]],
            "truncated" => receipt[..^1],
            _ => [.. receipt, 0],
        };

        Assert.Throws<ReceiptFormatException>(() => Receipt.Decode(bytes));
    }

    [Fact]
    public void A_signed_receipt_checks_and_any_edited_byte_breaks_its_signature()
    {
        using ServerSigningKey server = ServerSigningKey.CreateNew();
        SignedReceipt signed = new ReceiptSigner(server, TimeProvider.System).Sign("914403001922038216", "cluster-a", 42, new byte[32]);
        var verifier = new ReceiptVerifier([server.PublicKey]);

        Assert.Equal(ReceiptSignatureCheck.Valid, verifier.Check(signed, out Receipt? receipt, out _));
        Assert.Equal(42UL, receipt!.Sequence);
        Assert.Equal(server.KeyId, receipt.KeyId);

        // The sequence's last byte, then the chain head's first: each edit is caught.
        foreach (int at in new[] { signed.Signed.Length - 41, signed.Signed.Length - 40 })
        {
            byte[] edited = (byte[])signed.Signed.Clone();
            edited[at] ^= 1;
            Assert.Equal(ReceiptSignatureCheck.BadSignature, verifier.Check(signed with { Signed = edited }, out _, out string detail));
            Assert.StartsWith("bad signature", detail, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void A_forger_key_is_caught_whether_it_names_itself_or_the_server()
    {
        using ServerSigningKey server = ServerSigningKey.CreateNew();
        using ServerSigningKey forger = ServerSigningKey.CreateNew();
        var verifier = new ReceiptVerifier([server.PublicKey]);

        SignedReceipt ownName = new ReceiptSigner(forger, TimeProvider.System).Sign("914403001922038216", "cluster-a", 7, new byte[32]);
        Assert.Equal(ReceiptSignatureCheck.UnknownKeyId, verifier.Check(ownName, out _, out string unknown));
        Assert.Contains(forger.KeyId, unknown, StringComparison.Ordinal);

        byte[] claimed = new Receipt(server.KeyId, "914403001922038216", "cluster-a", 7, new byte[32], 1).Encode();
        Assert.Equal(ReceiptSignatureCheck.BadSignature, verifier.Check(new SignedReceipt(claimed, forger.Sign(claimed), server.KeyId), out _, out _));
    }

    [Fact]
    public void A_key_id_beside_the_receipt_that_differs_from_the_signed_one_is_reported()
    {
        using ServerSigningKey server = ServerSigningKey.CreateNew();
        SignedReceipt signed = new ReceiptSigner(server, TimeProvider.System).Sign("914403001922038216", "cluster-a", 1, new byte[32]);

        var check = new ReceiptVerifier([server.PublicKey]).Check(signed with { KeyId = "0000000000000000" }, out _, out string detail);

        Assert.Equal(ReceiptSignatureCheck.Malformed, check);
        Assert.Contains("not the one it was signed under", detail, StringComparison.Ordinal);
    }

    [Fact]
    public void A_stored_head_matches_only_when_stored_once_with_the_same_bytes_and_each_difference_is_named()
    {
        byte[] head = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        var receipt = new Receipt("0123456789abcdef", "914403001922038216", "cluster-a", 300, head, 1);
        byte[] other = (byte[])head.Clone();
        other[31] ^= 1;

        Assert.Null(ReceiptVerifier.StoredHeadProblem(receipt, stored: true, duplicated: false, head, committedSequence: 300));
        Assert.Equal("sequence 300 not stored: the database holds no record there (the stream's committed mark is 250)",
            ReceiptVerifier.StoredHeadProblem(receipt, stored: false, duplicated: false, default, committedSequence: 250));
        Assert.Equal("sequence 300 is stored more than once", ReceiptVerifier.StoredHeadProblem(receipt, stored: true, duplicated: true, head, committedSequence: 300));
        Assert.Equal($"head differs at sequence 300: receipt says {Convert.ToHexStringLower(head)}, database holds {Convert.ToHexStringLower(other)}",
            ReceiptVerifier.StoredHeadProblem(receipt, stored: true, duplicated: false, other, committedSequence: 300));
    }
}
