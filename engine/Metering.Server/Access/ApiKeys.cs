using System.Collections.Frozen;
using System.Security.Cryptography;
using System.Text;
using Metering.Engine.Identity;

namespace Metering.Server.Access;

/// <summary>Who is calling: for now always a provider, identified by its credit code.</summary>
public sealed record CallerIdentity(string ProviderId);

/// <summary>
/// Bearer API keys, held only as SHA-256 hashes. A key is looked up by its hash, so no secret is
/// ever compared byte by byte. The registry issue replaces the file with issued credentials.
///
/// File format: one key per line, "&lt;provider credit code&gt; &lt;sha256 hex of the key&gt;";
/// blank lines and lines starting with '#' are ignored.
/// </summary>
public sealed class ApiKeys
{
    public const int KeyBytes = 32;

    private readonly FrozenDictionary<string, CallerIdentity> _byHash;

    public ApiKeys(IEnumerable<(string ProviderId, string KeyHashHex)> entries)
    {
        var map = new Dictionary<string, CallerIdentity>(StringComparer.Ordinal);
        foreach (var (providerId, hash) in entries)
        {
            if (!CreditCode.IsValid(providerId))
            {
                throw new FormatException($"API key entry names '{providerId}', which is not a valid unified social credit code.");
            }

            if (hash.Length != 64 || !hash.All(char.IsAsciiHexDigitLower))
            {
                throw new FormatException($"API key entry for {providerId} must carry a 64-character lower-case SHA-256 hex digest.");
            }

            if (!map.TryAdd(hash, new CallerIdentity(providerId)))
            {
                throw new FormatException($"API key hash {hash[..8]}… is listed twice.");
            }
        }

        _byHash = map.ToFrozenDictionary(StringComparer.Ordinal);
    }

    public int Count => _byHash.Count;

    public static ApiKeys Load(string path)
    {
        var entries = new List<(string, string)>();
        int lineNumber = 0;
        foreach (string raw in File.ReadLines(path))
        {
            lineNumber++;
            string line = raw.Trim();
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }

            string[] parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2)
            {
                throw new FormatException($"{path}:{lineNumber}: expected '<provider credit code> <sha256 hex>'.");
            }

            entries.Add((parts[0], parts[1]));
        }

        try
        {
            return new ApiKeys(entries);
        }
        catch (FormatException e)
        {
            throw new FormatException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>A fresh random key (base64url, 256 bits).</summary>
    public static string NewKey() => Base64Url(RandomNumberGenerator.GetBytes(KeyBytes));

    public static string Hash(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    public CallerIdentity? Authenticate(string? key) =>
        key is { Length: > 0 and <= 256 } && _byHash.TryGetValue(Hash(key), out CallerIdentity? identity) ? identity : null;

    private static string Base64Url(byte[] bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');
}
